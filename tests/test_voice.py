"""Voice input with the real bundled Whisper model, on speech that espeak-ng synthesizes."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from symbiote.agents import Agent
from symbiote.agents.voice import Transcriber, Transcript, bundled_model_dir, voice_event
from symbiote.bus.envelope import from_wire
from symbiote.bus.events import InputVoice, parse_body
from symbiote.dispatcher import Dispatcher
from symbiote.errors import AudioError, ConfigError
from symbiote.projections.audit import why
from symbiote.signers.keyring import KeyEntry, Keyring
from tests.helpers import SPOKEN_REQUEST, World
from tests.helpers import speak as speak_to

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    return Transcriber(threads=2)


@pytest.fixture
def speak(tmp_path: Path) -> Callable[[str], Path]:
    """Speech of a sentence as a WAV file in ``tmp_path``."""
    return lambda text: speak_to(text, tmp_path / f"speech-{abs(hash(text))}.wav")


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def wav_ms(path: Path) -> int:
    with wave.open(str(path)) as audio:
        return round(audio.getnframes() * 1000 / audio.getframerate())


def test_speech_is_transcribed_offline(speak: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    path = speak("search my memory for the dentist appointment")

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the speech model must come from its package, never from the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    heard = Transcriber(threads=2).transcribe(path)
    assert {"search", "memory", "dentist", "appointment"} <= set(words(heard.text)), heard
    assert abs(heard.audio_ms - wav_ms(path)) <= 20
    assert (heard.model, heard.language) == ("tiny.en", "en")
    assert 0 < heard.real_time_factor < 5


def test_an_incomplete_model_folder_is_refused_not_completed_from_the_network(tmp_path: Path) -> None:
    partial = tmp_path / "model"
    shutil.copytree(bundled_model_dir(), partial)
    (partial / "tokenizer.json").unlink()
    with pytest.raises(ConfigError) as refused:
        Transcriber(partial).load()
    assert refused.value.fields["missing"] == ["tokenizer.json"]


def test_what_cannot_be_transcribed_is_refused(
    transcriber: Transcriber, speak: Callable[[str], Path], tmp_path: Path
) -> None:
    silence = transcriber.transcribe(np.zeros(16_000 * 2, dtype=np.float32))
    assert silence.text == "" and silence.audio_ms == 2000
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(bytes(range(256)) * 40)
    video = tmp_path / "video.mp4"  # a picture, no sound
    with av.open(str(video), "w") as out:
        stream = out.add_stream("mpeg4", rate=1)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), dtype=np.uint8), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    cases: list[tuple[Any, str]] = [
        (empty, "undecodable_audio"),
        (garbage, "undecodable_audio"),
        (garbage.read_bytes(), "undecodable_audio"),
        (video, "no_audio_stream"),
        (np.zeros((2, 16_000), dtype=np.float32), "bad_samples"),  # stereo
        (np.zeros(16_000, dtype=np.int16), "bad_samples"),  # not scaled to [-1, 1]
        (np.full(16_000, np.nan, dtype=np.float32), "bad_samples"),
    ]
    for audio, reason in cases:
        with pytest.raises(AudioError) as refused:
            transcriber.transcribe(audio)
        assert refused.value.reason == reason, (audio, refused.value)
    with pytest.raises(AudioError) as too_long:  # stops decoding at the limit
        Transcriber(threads=2, max_seconds=1.0).transcribe(speak("this sentence takes more than a second"))
    assert too_long.value.reason == "too_long"
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
    heard = await transcriber.transcribe_async(speak(SPOKEN_REQUEST))
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
    story = await why(world.bus, proposal.id)  # the audit's account names the spoken request
    said = story.steps[0]
    assert said.kind == "input" and said.ok and said.details["type"] == "input.voice"
    assert said.text.startswith(f"{world.user.principal} said ({heard.audio_ms / 1000:.1f} s, heard by tiny.en): ")


async def _proposal_for(world: World, source_id: str, timeout: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for msg in await world.bus.history("sym.cmd.*.proposed", 1):
            event = from_wire(msg.data)
            if event.cause == source_id:
                return event
        await asyncio.sleep(0.05)
    raise AssertionError("the agent proposed nothing for the spoken request")
