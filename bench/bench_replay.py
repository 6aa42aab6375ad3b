"""Replay throughput (with signature verification) and live projection lag under load.

``replay_per_s``: a realistic signed log (inputs, proposals, approvals, executions, outcomes,
denials) is rebuilt into a fresh schema by :func:`symbiote.projections.replay` — decoding,
verifying every signature at its position, folding every table, embedding the memory —
events per second of wall time, as ``symbiote replay`` does it to compare (the schema is
dropped afterwards, so it gets no secondary index). Target: >= 10,000.
``replay_into_per_s``: the same into a schema that is kept (``--into``): durable tables, and
every index built at the end (the HNSW graph of the memory too).

``projection_lag_p99_ms``: the live projector follows the stream while events are published
at ``rate`` per second (nats-server with ``sync_interval: always``); the lag of an event is
the time from the start of its publish to the commit of the transaction that projects it.
Target: p99 < 100 ms at 1,000 events/s. ``projection_lag_after_ack_*`` counts from the
publisher's ack instead (the disk write of the publish left out).

Run: ``python bench/bench_replay.py [--events N] [--rate R] [--seconds S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fresh, merge_results, percentile
from symbiote.bus.envelope import Envelope, make_event
from symbiote.bus.ids import now_ms
from symbiote.bus.stream import Bus
from symbiote.home import DataDir
from symbiote.lifecycle import tune_gc
from symbiote.logs import configure_logging
from symbiote.projections import PostgresServer, PostgresServerConfig, Projector, replay
from symbiote.signers.keys import SigningKey, sign_event

WORDS = ("garden", "dentist", "invoice", "train", "paris", "milk", "meeting", "report", "backup", "photos")


def chains(home: DataDir, count: int, *, start: int = 0) -> list[Envelope]:
    """About ``count`` signed events, as the runtime writes them, in order."""
    user, agent, runtime = home.load_key("user"), home.load_key("agent"), home.load_key("runtime")

    def sign(key: SigningKey, kind: str, body: dict[str, Any], **kw: Any) -> Envelope:
        return sign_event(make_event(kind, key.principal, body, **kw), key)

    out: list[Envelope] = []
    i = start
    while len(out) < count:
        i += 1
        word = WORDS[i % len(WORDS)]
        source = sign(user, "input.text", {"text": f"echo note {i} about the {word}"})
        if i % 10 == 0:
            args: dict[str, Any] = {"argv": ["ls", word]}
            command = "shell.run"
        else:
            args = {"text": f"note {i} about the {word}"}
            command = "echo"
        body = {"command": command, "args": args, "confidence": 0.8, "expires_at": now_ms() + 600_000}
        proposal = sign(agent, "command.proposed", body, corr=source.id, cause=source.id)
        ref = {"command_id": proposal.id}
        out += [source, proposal]
        if i % 25 == 0:
            out.append(
                sign(runtime, "command.denied", {**ref, "reason": "expired", "detail": "too late"}, cause=proposal.id)
            )
            continue
        if command == "shell.run":
            request = {
                **ref,
                "digest": proposal.digest(),
                "needs": 1,
                "principals": [user.principal],
                "expires_at": now_ms() + 600_000,
            }
            out.append(sign(runtime, "command.approval_requested", request, cause=proposal.id))
            out.append(sign(user, "command.approved", {**ref, "digest": proposal.digest()}, corr=source.id))
        out.append(sign(runtime, "command.started", {**ref, "sandbox": {"backend": "inprocess"}}, cause=proposal.id))
        output = {"text": args.get("text", ""), "stdout": f"{word}\n"}
        outcome = {**ref, "exit_code": 0, "output": output, "duration_ms": i % 40}
        out.append(sign(runtime, "command.succeeded", outcome, cause=proposal.id))
    return out


async def publish_fast(bus: Bus, events: list[Envelope], chunk: int = 500) -> int:
    last = 0
    for start in range(0, len(events), chunk):
        acks = await asyncio.gather(*(bus.publish(e) for e in events[start : start + chunk]))
        last = max(last, *(a.seq for a in acks))
    return last


async def measure_lag(bus: Bus, dsn: str, events: list[Envelope], rate: int) -> dict[str, Any]:
    """Publish ``events`` at ``rate``/s while a live projector follows; lag = publish start → commit."""
    committed: dict[int, float] = {}

    def on_commit(first: int, last: int, count: int) -> None:
        now = time.perf_counter()
        for seq in range(first, last + 1):
            committed[seq] = now

    projector = Projector(bus, dsn, on_commit=on_commit)
    async with projector:
        assert await projector.wait_for(await bus.last_seq(), 600), "the projector did not catch up"
        committed.clear()
        published: dict[int, float] = {}
        acked: dict[int, float] = {}
        tick = 0.01
        per_tick = max(1, round(rate * tick))
        loop = asyncio.get_running_loop()
        began = loop.time()

        async def one(event: Envelope) -> None:
            t0 = time.perf_counter()
            ack = await bus.publish(event)
            published[ack.seq] = t0
            acked[ack.seq] = time.perf_counter()

        pending: set[asyncio.Task[None]] = set()
        for index in range(0, len(events), per_tick):
            due = began + (index // per_tick) * tick
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            for event in events[index : index + per_tick]:
                task = asyncio.create_task(one(event))
                pending.add(task)
                task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        elapsed = loop.time() - began
        assert await projector.wait_for(max(published), 60), "the projector fell behind"
    lags = [(committed[s] - t0) * 1000 for s, t0 in published.items() if s in committed]
    # the projector's own part: from the publisher getting its ack (the event stored and, with
    # sync_interval: always, on disk) to the commit; 0 when the commit came first
    after_ack = [max(0.0, committed[s] - t) * 1000 for s, t in acked.items() if s in committed]
    return {
        "projection_lag_after_ack_p50_ms": round(percentile(after_ack, 50), 2),
        "projection_lag_after_ack_p99_ms": round(percentile(after_ack, 99), 2),
        "projection_lag_p50_ms": round(percentile(lags, 50), 2),
        "projection_lag_p99_ms": round(percentile(lags, 99), 2),
        "projection_lag_max_ms": round(max(lags), 2),
        "projection_lag_samples": len(lags),
        "projection_lag_rate_per_s": round(len(published) / elapsed, 1),
    }


async def bench_replay(events: int = 30_000, rate: int = 1000, seconds: float = 10.0) -> dict[str, Any]:
    """Measure replay throughput and projection lag; returns the result keys (see the module doc)."""
    pg_root = Path(tempfile.mkdtemp(prefix="symbiote-bench-pg-"))
    try:
        async with fresh() as setup, PostgresServer(PostgresServerConfig(data_dir=pg_root / "pg")) as pg:
            log = chains(setup.home, events)
            load = chains(setup.home, int(rate * seconds), start=len(log))
            await publish_fast(setup.bus, log)
            report = await replay(setup.bus, pg.dsn, compare=False)
            results: dict[str, Any] = {
                "replay_per_s": round(report.per_s),
                "replay_events": report.events,
                "replay_seconds": round(report.seconds, 2),
                "replay_setup_seconds": round(report.setup_seconds, 2),
                "replay_cpus": os.cpu_count(),
            }
            results.update(await measure_lag(setup.bus, pg.dsn, load, rate))
            # last: its write-ahead log and index builds would disturb the lag measurement
            kept = await replay(setup.bus, pg.dsn, into="bench_kept", compare=False)
            results["replay_into_per_s"] = round(kept.per_s)
            results["replay_into_events"] = kept.events
            return results
    finally:
        shutil.rmtree(pg_root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000, help="events in the log to replay")
    parser.add_argument("--rate", type=int, default=1000, help="events per second during the lag test")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the lag test")
    options = parser.parse_args()
    configure_logging("warning", json=True)
    tune_gc()  # as `symbiote up` does
    results = asyncio.run(bench_replay(options.events, options.rate, options.seconds))
    merge_results(results)
    targets = {"replay_per_s": ">= 10000", "projection_lag_p99_ms": "< 100"}
    print(f"{'measure':32} {'result':>12}  target")
    for key, value in results.items():
        print(f"{key:32} {value!s:>12}  {targets.get(key, '')}")


if __name__ == "__main__":
    main()
