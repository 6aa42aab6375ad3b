"""`make bench`: every benchmark, one table, bench/results.json."""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, merge_results
from symbiote.lifecycle import tune_gc
from symbiote.logs import configure_logging

BENCHES = [
    ("bench.bench_dispatch", "bench_dispatch"),
    ("bench.bench_approval", "bench_approval"),
    ("bench.bench_replay", "bench_replay"),
    ("bench.bench_voice", "bench_voice"),
]
TARGETS = {
    "dispatch_ratio": ">= 0.5",
    "dispatch_per_s_default_sync": ">= 5000",
    "latency_p99_ms": "< 20 (at 1000/s)",
    "latency_p99_ms_at_500": "< 20 (at 500/s)",
    "sandbox_p50_ms": "< 10",
    "approval_p99_ms": "< 50",
    "replay_per_s": ">= 10000",
    "projection_lag_p99_ms": "< 100",
    "voice_rtf": "<= 0.15",
}


async def main() -> None:
    configure_logging("warning", json=True)
    tune_gc()  # as `symbiote up` does
    for module_name, function_name in BENCHES:
        module = importlib.import_module(module_name)
        bench: Callable[[], Awaitable[dict[str, Any]]] = getattr(module, function_name)
        print(f"running {function_name}…", flush=True)
        merge_results(await bench())
    results = merge_results({})
    print(f"\n{'measure':40} {'result':>14}  target")
    for key in sorted(results):
        print(f"{key:40} {results[key]!s:>14}  {TARGETS.get(key, '')}")
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    asyncio.run(main())
