"""Voice transcription speed with the bundled tiny.en model on this machine's CPU cores.

``voice_rtf``: real-time factor (transcription time / audio time, lower is faster) of about
half a minute of dictation, several sentences spoken by espeak-ng, transcribed as
``symbiote say --audio`` does it (beam 5, voice-activity trimming, int8 on the CPU). Target:
<= 0.15 on 2 cores. ``voice_rtf_short``: the same for one short spoken command (about 3 s):
whisper always encodes a 30-second window, so short recordings cost about the same absolute
time and their factor is higher. Each is the median of ``repeat`` runs with the model loaded.
``voice_wer``: the word error rate of the dictation's transcript against its script (espeak-ng's
synthetic voice is harder to understand than a person's).

Run: ``python bench/bench_voice.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import merge_results
from symbiote.agents.voice import Transcriber

DICTATION = (
    "Good morning. Remind me to call the dentist tomorrow at nine. Then write a note about the garden: "
    "the tomatoes need water every evening, and the fence by the gate is broken. "
    "Search my memory for what I asked you about the train to Paris last week. "
    "Please echo good morning to everyone in the house, and list the files in my photos folder. "
    "Finally, make a backup of the report before the meeting on Friday afternoon."
)
COMMAND = "please echo good morning to everyone"


def word_error_rate(reference: str, heard: str) -> float:
    """Word-level edit distance over the reference's length (punctuation and case ignored)."""
    ref, hyp = re.findall(r"[a-z']+", reference.lower()), re.findall(r"[a-z']+", heard.lower())
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, other in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != other))
    return row[-1] / max(1, len(ref))


def _speak(text: str, path: Path) -> Path:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("espeak-ng is not installed (make bench installs it)")
    subprocess.run([espeak, "-v", "en-us", "-s", "150", "-w", str(path), text], check=True, timeout=60)
    return path


async def bench_voice(repeat: int = 5) -> dict[str, Any]:
    """Measure the real-time factors; returns the result keys (see the module doc)."""
    threads = min(8, os.cpu_count() or 2)
    transcriber = Transcriber(threads=threads)
    with tempfile.TemporaryDirectory(prefix="symbiote-bench-voice-") as tmp:
        long_audio = _speak(DICTATION, Path(tmp) / "dictation.wav")
        short_audio = _speak(COMMAND, Path(tmp) / "command.wav")
        transcriber.transcribe(short_audio)  # load the model
        results: dict[str, Any] = {"voice_threads": threads}
        for key, audio in (("voice_rtf", long_audio), ("voice_rtf_short", short_audio)):
            runs = [transcriber.transcribe(audio) for _ in range(repeat)]
            results[key] = round(statistics.median(r.real_time_factor for r in runs), 3)
            results[f"{key}_audio_s"] = round(runs[0].audio_ms / 1000, 1)
            if key == "voice_rtf":
                results["voice_wer"] = round(word_error_rate(DICTATION, runs[0].text), 3)
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="transcriptions of each recording")
    options = parser.parse_args()
    results = asyncio.run(bench_voice(options.repeat))
    merge_results(results)
    print(f"{'measure':32} {'result':>12}  target")
    for key, value in results.items():
        print(f"{key:32} {value!s:>12}  {'<= 0.15' if key == 'voice_rtf' else ''}")


if __name__ == "__main__":
    main()
