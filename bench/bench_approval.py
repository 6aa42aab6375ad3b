"""Approval latency: from a signed approval POSTed to the HTTPS API to ``command.started``.

Each round proposes a command that needs one user approval (executor ``noop``, so the
sandbox is not measured), waits until the API shows it pending, then POSTs a user-signed
``command.approved`` over HTTPS and times until the API's view of the log has the
dispatcher's ``command.started``. The path measured: TLS + HTTP, the API's signature and
policy checks, the publish (fsync'd), the dispatcher's fetch, re-fold and checks, and its
claim with optimistic concurrency. Target: p99 < 50 ms.

Run: ``python bench/bench_approval.py [rounds]`` (prints a table, merges into bench/results.json).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fresh, merge_results, percentile
from symbiote.api import ApiServer
from symbiote.bootstrap import define_command
from symbiote.bus.envelope import make_event
from symbiote.bus.ids import now_ms
from symbiote.dispatcher import Dispatcher, Executors
from symbiote.logs import configure_logging
from symbiote.registry.definition import ApprovalPolicy, CommandDefinition
from symbiote.signers.keys import sign_event

__all__ = ["bench_approval"]

GATED = CommandDefinition(
    name="bench.gated",
    description="does nothing, after one user approval",
    executor="noop",
    approval=ApprovalPolicy(mode="user", quorum=1),
    risk="none: does nothing",
)
TARGET_P99_MS = 50.0


async def bench_approval(rounds: int = 200, *, warmup: int = 10, sync_always: bool = True) -> dict[str, Any]:
    """Run ``rounds`` (+ ``warmup``) approvals one after another; return the latency percentiles (ms)."""
    latencies: list[float] = []
    http: list[float] = []
    async with fresh(sync_always=sync_always) as setup:
        bus, home = setup.bus, setup.home
        await define_command(bus, home.load_key("owner"), GATED)
        agent, user = home.load_key("agent"), home.load_key("user")
        async with (
            Dispatcher(bus, home.load_key("runtime"), Executors(setup.tmp / "ws")),
            ApiServer(bus, home, "127.0.0.1", 0) as api,
        ):
            assert api.tls is not None
            context = ssl.create_default_context(cafile=str(api.tls.cert_path))
            async with httpx.AsyncClient(base_url=api.url, verify=context, timeout=10) as client:
                board = api.board
                for i in range(warmup + rounds):
                    body = {"command": GATED.name, "args": {}, "confidence": 1.0, "expires_at": now_ms() + 60_000}
                    proposal = sign_event(make_event("command.proposed", agent.principal, body), agent)
                    await bus.publish(proposal)
                    cid = proposal.id

                    def pending(cid: str = cid) -> bool:
                        life = board.life(cid)
                        return life is not None and life.pending_approval

                    def started(cid: str = cid) -> bool:
                        life = board.life(cid)
                        return life is not None and life.started_seq > 0

                    await board.wait_for(pending, timeout=10)
                    answer = {"command_id": cid, "digest": proposal.digest()}
                    approval = sign_event(
                        make_event("command.approved", user.principal, answer, corr=proposal.corr, cause=cid), user
                    )
                    payload = {"wire": base64.b64encode(approval.to_wire()).decode()}
                    t0 = time.perf_counter()
                    resp = await client.post("/api/approvals", json=payload)
                    t1 = time.perf_counter()
                    if resp.status_code != 202:
                        raise RuntimeError(f"approval refused: {resp.status_code} {resp.text}")
                    await board.wait_for(started, timeout=10)
                    t2 = time.perf_counter()
                    if i >= warmup:
                        http.append((t1 - t0) * 1000)
                        latencies.append((t2 - t0) * 1000)
    return {
        "approval_p50_ms": round(percentile(latencies, 50), 2),
        "approval_p99_ms": round(percentile(latencies, 99), 2),
        "approval_max_ms": round(max(latencies), 2),
        "approval_http_p50_ms": round(percentile(http, 50), 2),
        "approval_samples": len(latencies),
    }


def _table(results: dict[str, Any]) -> str:
    rows = [f"{'metric':<24} {'value':>10}", "-" * 35]
    rows += [f"{key:<24} {value:>10}" for key, value in results.items()]
    verdict = "meets" if results["approval_p99_ms"] < TARGET_P99_MS else "MISSES"
    rows.append(f"p99 {verdict} the target of {TARGET_P99_MS:g} ms")
    return "\n".join(rows)


if __name__ == "__main__":
    configure_logging("warning")
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    out = asyncio.run(bench_approval(count))
    merge_results(out)
    print(_table(out))
