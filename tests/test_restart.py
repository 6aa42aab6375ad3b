"""kill -9 the dispatcher in the middle of a burst: every command ends in exactly one terminal event."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest

from symbiote.bootstrap import define_command
from symbiote.bus.envelope import from_wire
from symbiote.registry.definition import CommandDefinition
from tests.helpers import is_terminal, make_world

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parent.parent


async def _start(nats_url: str, data_dir: Path) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "symbiote.cli", "dispatcher", "--nats-url", nats_url],
        *["--data-dir", str(data_dir), "--log-level", "warning"],
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.strip() == b"dispatcher ready"
    return proc


async def test_kill_dispatcher_mid_burst(nats_url: str, tmp_path: Path) -> None:
    world = await make_world(nats_url, tmp_path / "home")
    bus = world.bus
    await define_command(
        bus,
        world.owner,
        CommandDefinition(
            name="tick",
            description="count a tick",
            executor="noop",
            idempotent=False,
            args_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
        ),
    )
    ids: dict[str, str] = {}
    for n in range(500):  # all queued before any dispatcher runs: the kills land in the middle of them
        command = "echo" if n % 2 else "tick"
        args = {"text": str(n)} if command == "echo" else {"n": n}
        # a killed dispatcher's unacknowledged messages come back after the 30 s ack wait, twice
        # over on a slow machine: the proposals must not expire meanwhile
        ids[(await world.propose(command, args, expires_in_ms=600_000)).id] = command

    async def terminals() -> Counter[str]:
        counts: Counter[str] = Counter()
        async for msg in bus.read("sym.cmd.>"):
            event = from_wire(msg.data)
            cid = str(event.body.get("command_id", event.id))
            if is_terminal(event, cid):
                counts[cid] += 1
        return counts

    ended: set[str] = set()

    async def watch() -> None:
        async for msg in bus.read("sym.cmd.>", follow=True):
            event = from_wire(msg.data)
            cid = str(event.body.get("command_id", event.id))
            if is_terminal(event, cid):
                ended.add(cid)

    watcher = asyncio.create_task(watch())
    proc = await _start(nats_url, world.home.root)
    at_kills: list[int] = []
    try:
        while len(at_kills) < 2:
            if len(ended) >= 120 * (len(at_kills) + 1):
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                at_kills.append(len(ended))
                proc = await _start(nats_url, world.home.root)
            await asyncio.sleep(0.002)
        deadline = asyncio.get_running_loop().time() + 120
        while len(ended) < len(ids):
            assert asyncio.get_running_loop().time() < deadline, f"only {len(ended)} ended"
            await asyncio.sleep(0.2)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher  # a failure of the watcher itself is raised here
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
    assert all(n < len(ids) for n in at_kills), at_kills  # each kill cut the burst short
    counts = await terminals()
    assert set(counts) == set(ids)
    assert all(n == 1 for n in counts.values()), {k: v for k, v in counts.items() if v != 1}
    started: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    async for msg in bus.read("sym.cmd.>"):
        event = from_wire(msg.data)
        if event.type == "command.started":
            started[event.body["command_id"]] += 1
        if event.type == "command.denied":
            reasons[event.body["reason"]] += 1
    # a non-idempotent command never starts twice; anything cut short is closed as outcome_unknown
    assert all(started[cid] <= 1 for cid, command in ids.items() if command == "tick")
    assert set(reasons) <= {"outcome_unknown"}, reasons
    await bus.close()
