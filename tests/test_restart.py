"""kill -9 the dispatcher in the middle of a burst: every command ends in exactly one terminal event."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest

from symbiote.bootstrap import define_command
from symbiote.bus.envelope import from_wire
from symbiote.registry.definition import CommandDefinition
from tests.helpers import is_terminal, make_world

pytestmark = pytest.mark.timeout(180)
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
    proc = await _start(nats_url, world.home.root)
    ids: dict[str, str] = {}
    for n in range(500):
        command = "echo" if n % 2 else "tick"
        args = {"text": str(n)} if command == "echo" else {"n": n}
        ids[(await world.propose(command, args)).id] = command

    async def terminals() -> Counter[str]:
        counts: Counter[str] = Counter()
        async for msg in bus.read("sym.cmd.>"):
            event = from_wire(msg.data)
            cid = str(event.body.get("command_id", event.id))
            if is_terminal(event, cid):
                counts[cid] += 1
        return counts

    kills = 0
    while kills < 2:
        done = len(await terminals())
        if done >= 120 * (kills + 1):
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            kills += 1
            proc = await _start(nats_url, world.home.root)
        await asyncio.sleep(0.02)
    try:
        deadline = asyncio.get_running_loop().time() + 90
        while len(await terminals()) < len(ids):
            assert asyncio.get_running_loop().time() < deadline, f"only {len(await terminals())} ended"
            await asyncio.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
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
