"""Voice input with the real bundled Whisper model, on speech that espeak-ng synthesizes."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from symbiote.agents import Agent
from symbiote.agents.voice import Transcriber, Transcript, voice_event
from symbiote.bus.envelope import from_wire
from symbiote.bus.events import InputVoice, parse_body
from symbiote.dispatcher import Dispatcher
from symbiote.errors import ConfigError, DecodeError
from symbiote.signers.keyring import KeyEntry, Keyring
from tests.helpers import World

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    return Transcriber(threads=2)


@pytest.fixture
def speak(tmp_path: Path) -> Callable[[str], Path]:
    """Speech of a sentence as a WAV file (espeak-ng; `make test` installs it)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.fail("espeak-ng is not installed: `make test` installs it (apt-get install -y espeak-ng)")

    def make(text: str) -> Path:
        path = tmp_path / f"speech-{abs(hash(text))}.wav"
        subprocess.run([espeak, "-v", "en-us", "-s", "130", "-w", str(path), text], check=True, timeout=30)
        return path

    return make


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def wav_ms(path: Path) -> int:
    with wave.open(str(path)) as audio:
        return round(audio.getnframes() * 1000 / audio.getframerate())


def test_speech_is_transcribed_offline(speak: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import faster_whisper.transcribe

    def no_download(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the speech model must come from its package, never be downloaded")

    monkeypatch.setattr(faster_whisper.transcribe, "download_model", no_download)
    path = speak("search my memory for the dentist appointment")
    heard = Transcriber(threads=2).transcribe(path)
    assert {"search", "memory", "dentist", "appointment"} <= set(words(heard.text)), heard
    assert abs(heard.audio_ms - wav_ms(path)) <= 20
    assert (heard.model, heard.language) == ("tiny.en", "en")
    assert 0 < heard.real_time_factor < 5


def test_silence_and_bad_audio(transcriber: Transcriber, tmp_path: Path) -> None:
    silence = transcriber.transcribe(np.zeros(16_000 * 2, dtype=np.float32))
    assert silence.text == "" and silence.audio_ms == 2000
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(DecodeError):
        transcriber.transcribe(garbage)
    with pytest.raises(ConfigError):
        transcriber.transcribe(tmp_path / "missing.wav")


def test_a_transcript_is_a_signed_voice_input(world: World) -> None:
    heard = Transcript(text="echo hi", language="en", audio_ms=2500, model="tiny.en", seconds=0.3)
    event = voice_event(heard, world.user)
    again = from_wire(event.to_wire())
    body = parse_body(again)
    assert isinstance(body, InputVoice) and body.SUBJECT == "sym.in.voice"
    assert (body.text, body.audio_ms, body.model, body.language) == ("echo hi", 2500, "tiny.en", "en")
    keyring = Keyring()
    keyring.keys[world.user.kid] = KeyEntry(world.user.kid, world.user.principal, "user", registered_seq=1)
    assert keyring.verify(again, 2).principals == [world.user.principal]


async def test_a_spoken_request_runs(
    world: World, dispatcher: Dispatcher, transcriber: Transcriber, speak: Callable[[str], Path]
) -> None:
    heard = await transcriber.transcribe_async(speak("please echo good morning to everyone"))
    assert {"echo", "good", "morning"} <= set(words(heard.text)), heard
    source = voice_event(heard, world.user)
    async with Agent(world.bus, world.agent):
        ack = await world.bus.publish(source)
        assert [m.subject for m in await world.bus.history("sym.in.voice", ack.seq, 1)] == ["sym.in.voice"]
        proposal = await _proposal_for(world, source.id)
        assert proposal.body["command"] == "echo"
        outcome = await world.wait_terminal(proposal.id)
    assert outcome.type == "command.succeeded"
    assert "good morning" in outcome.body["output"]["text"].lower()


async def _proposal_for(world: World, source_id: str, timeout: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for msg in await world.bus.history("sym.cmd.*.proposed", 1):
            event = from_wire(msg.data)
            if event.cause == source_id:
                return event
        await asyncio.sleep(0.05)
    raise AssertionError("the agent proposed nothing for the spoken request")
