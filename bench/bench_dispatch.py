"""Dispatch throughput against raw nats-py JetStream, dispatch latency, and sandbox start latency.

Throughput is counted in events, for both: the raw baseline consumes one message and
publishes one (2 events a message); the dispatcher consumes one proposal and publishes
``command.started`` and ``command.succeeded`` (3 events a command), with every signature
verified, the registry consulted, and the claim made with optimistic concurrency.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats.errors
from nats.js import api

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Setup, fresh, merge_results, percentile
from symbiote.bootstrap import define_command
from symbiote.bus.envelope import Envelope, make_event, peek_id
from symbiote.bus.ids import now_ms
from symbiote.dispatcher import Dispatcher, Executors
from symbiote.home import DataDir
from symbiote.registry.definition import CommandDefinition
from symbiote.sandbox import BubblewrapSandbox, SandboxProfile
from symbiote.signers.keys import sign_event

NOOP = CommandDefinition(name="noop", description="does nothing", executor="noop", idempotent=True)


async def raw_js(n: int, *, sync_always: bool) -> float:
    """Raw nats-py: consume n messages with a durable pull consumer and publish one for each; events/s."""
    async with fresh(sync_always=sync_always, init=False) as setup:
        js = setup.bus.js
        payload = b"x" * 300
        for i in range(0, n, 500):
            await asyncio.gather(*(js.publish("sym.in.raw", payload) for _ in range(min(500, n - i))))
        config = api.ConsumerConfig(
            durable_name="raw", ack_policy=api.AckPolicy.EXPLICIT, filter_subject="sym.in.raw", max_ack_pending=20_000
        )
        await js.add_consumer(setup.bus.stream, config)
        sub = await js.pull_subscribe_bind("raw", stream=setup.bus.stream)
        done = 0
        start = time.perf_counter()
        while done < n:
            try:
                msgs = await sub.fetch(256, timeout=1)
            except (nats.errors.TimeoutError, TimeoutError):
                continue

            async def one(msg: Any) -> None:
                await js.publish("sym.in.out", msg.data)
                await msg.ack()

            await asyncio.gather(*(one(m) for m in msgs))
            done += len(msgs)
        elapsed = time.perf_counter() - start
        return 2 * n / elapsed


@asynccontextmanager
async def dispatchers(setup: Setup, processes: int) -> AsyncIterator[None]:
    """The dispatcher in this process (``processes=0``), or that many `symbiote dispatcher` processes."""
    if processes == 0:
        async with Dispatcher(setup.bus, setup.home.load_key("runtime"), Executors(setup.tmp / "ws")):
            yield
        return
    procs = []
    try:
        for _ in range(processes):
            proc = await asyncio.create_subprocess_exec(
                *[sys.executable, "-m", "symbiote.cli", "dispatcher", "--nats-url", setup.server.url],
                *["--data-dir", str(setup.home.root), "--log-level", "warning"],
                stdout=asyncio.subprocess.PIPE,
            )
            procs.append(proc)
            assert proc.stdout is not None
            await asyncio.wait_for(proc.stdout.readline(), 60)
        yield
    finally:
        for proc in procs:
            proc.terminate()
            await proc.wait()


def noop_proposals(home: DataDir, count: int) -> list[Envelope]:
    """``count`` proposals of the no-op command, signed by the agent, valid for an hour."""
    agent = home.load_key("agent")
    expires = now_ms() + 3_600_000
    body = {"command": "noop", "args": {}, "confidence": 1.0, "expires_at": expires}
    return [sign_event(make_event("command.proposed", agent.principal, dict(body)), agent) for _ in range(count)]


async def dispatch(n: int, *, sync_always: bool, processes: int = 0) -> float:
    """Dispatchers on n pre-published agent-signed proposals of an in-process no-op; commands/s."""
    async with fresh(sync_always=sync_always) as setup:
        bus, home = setup.bus, setup.home
        await define_command(bus, home.load_key("owner"), NOOP)
        events = noop_proposals(home, n)
        for i in range(0, n, 500):
            await asyncio.gather(*(bus.publish(e) for e in events[i : i + 500]))
        base = await bus.last_seq()
        async with dispatchers(setup, processes):
            start = time.perf_counter()
            while await bus.last_seq() < base + 2 * n:
                await asyncio.sleep(0.005)
            return n / (time.perf_counter() - start)


async def latency(rate: int, seconds: float, *, processes: int = 0) -> list[float]:
    """Offer ``rate`` proposals/s; latency from publishing the proposal to receiving ``succeeded`` (ms)."""
    async with fresh(sync_always=True) as setup:
        bus, home = setup.bus, setup.home
        await define_command(bus, home.load_key("owner"), NOOP)
        sent: dict[str, float] = {}
        got: list[float] = []

        async def on_done(msg: Any) -> None:
            command_id = msg.subject.split(".")[2]
            if command_id in sent:
                got.append((time.perf_counter() - sent[command_id]) * 1000)

        sub = await bus.nc.subscribe("sym.cmd.*.succeeded", cb=on_done)
        total = int(rate * seconds)
        # signed beforehand: the agent's work is not part of proposed → succeeded
        proposals = [event.to_wire() for event in noop_proposals(home, total)]
        async with dispatchers(setup, processes):
            await asyncio.sleep(0.5)
            start = time.perf_counter()
            tasks = []
            for i, wire in enumerate(proposals):
                target = start + i / rate
                delay = target - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                command_id = wire_id(wire)
                sent[command_id] = time.perf_counter()
                subject = f"sym.cmd.{command_id}.proposed"
                tasks.append(asyncio.create_task(bus.publish_raw(subject, wire, msg_id=command_id)))
            await asyncio.gather(*tasks)
            deadline = time.perf_counter() + 10
            while len(got) < total and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
        await sub.unsubscribe()
        return got


def wire_id(wire: bytes) -> str:
    event_id = peek_id(wire)
    assert event_id is not None
    return event_id


async def sandbox_start(runs: int) -> list[float]:
    """Wall time of running `true` in the bubblewrap sandbox (ms)."""
    sandbox = BubblewrapSandbox()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            result = await sandbox.run(["true"], workspace=ws, profile=SandboxProfile())
            times.append((time.perf_counter() - start) * 1000)
            assert result.exit_code == 0
        return times


async def bench_dispatch(n: int = 10_000) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for sync_always, suffix in ((True, ""), (False, "_default_sync")):
        raw = await raw_js(n, sync_always=sync_always)
        cmds = await dispatch(n, sync_always=sync_always)
        results[f"raw_js_per_s{suffix}"] = round(raw)
        results[f"dispatch_per_s{suffix}"] = round(cmds)
        results[f"dispatch_events_per_s{suffix}"] = round(3 * cmds)
        results[f"dispatch_ratio{suffix}"] = round(3 * cmds / raw, 3)
        two = await dispatch(n, sync_always=sync_always, processes=2)
        results[f"dispatch_per_s_2proc{suffix}"] = round(two)
        results[f"dispatch_ratio_2proc{suffix}"] = round(3 * two / raw, 3)
    for rate, suffix in ((1000, ""), (500, "_at_500")):
        lat = await latency(rate, 3.0)
        results[f"latency_p50_ms{suffix}"] = round(percentile(lat, 50), 2)
        results[f"latency_p99_ms{suffix}"] = round(percentile(lat, 99), 2)
        results[f"latency_samples{suffix}"] = len(lat)
    times = await sandbox_start(200)
    results["sandbox_p50_ms"] = round(percentile(times, 50), 2)
    results["sandbox_p95_ms"] = round(percentile(times, 95), 2)
    return results


if __name__ == "__main__":
    out = asyncio.run(bench_dispatch())
    merge_results(out)
    for key, value in out.items():
        print(f"{key:32} {value}")
