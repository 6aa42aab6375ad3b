"""Helpers shared by the spine tests: an initialized data dir, signed events, waiting on the log."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from symbiote.bootstrap import initialize
from symbiote.bus.envelope import Envelope, from_wire, make_event
from symbiote.bus.ids import now_ms
from symbiote.bus.stream import Bus, StoredMsg
from symbiote.errors import DecodeError
from symbiote.home import DataDir
from symbiote.signers.keys import SigningKey, sign_event

A = TypeVar("A", bound="Actors")


@dataclass
class World:
    """A bus on a real nats-server with an initialized data dir (keys registered, commands defined)."""

    bus: Bus
    home: DataDir

    @property
    def owner(self) -> SigningKey:
        return self.home.load_key("owner")

    @property
    def agent(self) -> SigningKey:
        return self.home.load_key("agent")

    @property
    def runtime(self) -> SigningKey:
        return self.home.load_key("runtime")

    @property
    def user(self) -> SigningKey:
        return self.home.load_key("user")

    def proposal(
        self,
        command: str,
        args: dict[str, Any],
        *,
        key: SigningKey | None = None,
        actor: str | None = None,
        confidence: float = 0.9,
        expires_in_ms: int = 60_000,
    ) -> Envelope:
        signer = key or self.agent
        event = make_event(
            "command.proposed",
            actor or signer.principal,
            {"command": command, "args": args, "confidence": confidence, "expires_at": now_ms() + expires_in_ms},
        )
        return sign_event(event, signer)

    async def propose(self, command: str, args: dict[str, Any], **kwargs: Any) -> Envelope:
        event = self.proposal(command, args, **kwargs)
        await self.bus.publish(event)
        return event

    async def events(self, subject: str = "sym.>") -> list[tuple[StoredMsg, Envelope | None]]:
        out: list[tuple[StoredMsg, Envelope | None]] = []
        async for msg in self.bus.read(subject):
            try:
                out.append((msg, from_wire(msg.data)))
            except DecodeError:
                out.append((msg, None))
        return out

    async def command_events(self, command_id: str) -> list[Envelope]:
        msgs = await self.bus.history(f"sym.cmd.{command_id}.>", 1, limit=None)
        out = []
        for msg in msgs:
            try:
                out.append(from_wire(msg.data))
            except DecodeError:
                continue  # the undecodable input itself; its denial is what tests look for
        return out

    async def wait_for(
        self, command_id: str, predicate: Callable[[list[Envelope]], bool], timeout: float = 10.0
    ) -> list[Envelope]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            events = await self.command_events(command_id)
            if predicate(events):
                return events
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out; events were {[e.type for e in events]}")
            await asyncio.sleep(0.05)

    async def wait_terminal(self, command_id: str, timeout: float = 10.0) -> Envelope:
        events = await self.wait_for(command_id, lambda evs: any(is_terminal(e, command_id) for e in evs), timeout)
        return next(e for e in events if is_terminal(e, command_id))


def is_terminal(event: Envelope, command_id: str) -> bool:
    """``succeeded`` / ``failed``, or a ``denied`` that ends the command (cause = command id)."""
    if event.type in ("command.succeeded", "command.failed"):
        return True
    return event.type == "command.denied" and event.cause == command_id


async def make_world(nats_url: str, root: Path, *, name: str = "alice") -> World:
    bus = await Bus.connect(nats_url)
    await bus.ensure_stream()
    home = DataDir(root)
    await initialize(bus, home, name=name)
    return World(bus, home)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@dataclass
class Actors:
    """The keys of an initialized data dir, and shortcuts to build and publish signed events."""

    bus: Bus
    home: DataDir
    owner: SigningKey
    user: SigningKey
    agent: SigningKey
    runtime: SigningKey

    async def send(self, event: Envelope) -> int:
        return (await self.bus.publish(event)).seq

    def sign(self, key: SigningKey, kind: str, body: dict[str, Any], **kw: Any) -> Envelope:
        return sign_event(make_event(kind, key.principal, body, **kw), key)

    def text(self, text: str, key: SigningKey | None = None) -> Envelope:
        return self.sign(key or self.user, "input.text", {"text": text})

    def proposal(self, source: Envelope, command: str, args: dict[str, Any], confidence: float = 0.9) -> Envelope:
        body = {"command": command, "args": args, "confidence": confidence, "expires_at": now_ms() + 600_000}
        return self.sign(self.agent, "command.proposed", body, corr=source.id, cause=source.id)

    def runtime_event(self, kind: str, proposal: Envelope, **body: Any) -> Envelope:
        return self.sign(self.runtime, kind, {"command_id": proposal.id, **body}, corr=proposal.corr, cause=proposal.id)

    def approval(self, proposal: Envelope, key: SigningKey | None = None, approve: bool = True) -> Envelope:
        kind = "command.approved" if approve else "command.rejected"
        body = {"command_id": proposal.id, "digest": proposal.digest()}
        return self.sign(key or self.user, kind, body, corr=proposal.corr)


@asynccontextmanager
async def actors_on(nats_url: str, root: Path, cls: type[A], *, name: str = "ann") -> AsyncIterator[A]:
    """``cls`` (an :class:`Actors`) over a data dir at ``root`` initialized on ``nats_url``."""
    world = await make_world(nats_url, root, name=name)
    home = world.home
    try:
        yield cls(world.bus, home, *(home.load_key(r) for r in ("owner", "user", "agent", "runtime")))
    finally:
        await world.bus.close()


SPOKEN_REQUEST = "please echo good morning to everyone"
"""A request the tests speak: it comes through with every CPU code path of the speech model."""


def speak(text: str, path: Path) -> Path:
    """Write speech of ``text`` to the WAV file ``path`` with espeak-ng (`make test` installs it);
    slow enough that the words come through on every CPU instruction set the model runs with."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.fail("espeak-ng is not installed: `make test` installs it (apt-get install -y espeak-ng)")
    subprocess.run([espeak, "-v", "en-us", "-s", "110", "-w", str(path), text], check=True, timeout=30)
    return path


async def publish_raw_subject(bus: Bus, subject: bytes, payload: bytes) -> int:
    """Publish with bytes for a subject, as any client of the server can (nats-py would refuse),
    and wait for JetStream to store it: returns the sequence its acknowledgement names."""
    url = bus.nc.connected_url
    assert url is not None and url.hostname is not None and url.port is not None
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        await reader.readline()  # INFO
        inbox = b"_INBOX.raw_subject_ack"
        frame = b"PUB " + subject + b" " + inbox + b" " + str(len(payload)).encode() + b"\r\n" + payload + b"\r\n"
        writer.write(b'CONNECT {"verbose":false}\r\nSUB ' + inbox + b" 1\r\n" + frame)
        await writer.drain()
        while True:  # the server may PING first; the acknowledgement is the one MSG to the inbox
            line = await asyncio.wait_for(reader.readline(), timeout=10)
            if line.startswith(b"PING"):
                writer.write(b"PONG\r\n")
                continue
            assert line.startswith(b"MSG "), line
            ack = json.loads((await reader.readexactly(int(line.split()[-1]) + 2))[:-2])
            assert "error" not in ack, ack
            return int(ack["seq"])
    finally:
        writer.close()
