"""Shared pieces of the benchmarks: a fresh server + initialized data dir, results file."""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from symbiote.bootstrap import initialize
from symbiote.bus.server import NatsServer, NatsServerConfig
from symbiote.bus.stream import Bus
from symbiote.home import DataDir

RESULTS = Path(__file__).parent / "results.json"


@dataclass
class Setup:
    server: NatsServer
    bus: Bus
    home: DataDir
    tmp: Path


@asynccontextmanager
async def fresh(*, sync_always: bool = True, init: bool = True) -> AsyncIterator[Setup]:
    """A new nats-server (in a temp dir) with the stream and, optionally, an initialized data dir."""
    with tempfile.TemporaryDirectory(prefix="symbiote-bench-") as tmp:
        root = Path(tmp)
        async with NatsServer(NatsServerConfig(store_dir=root / "nats", sync_always=sync_always)) as server:
            bus = await Bus.connect(server.url, name="bench")
            await bus.ensure_stream()
            home = DataDir(root / "home")
            if init:
                await initialize(bus, home, name="bench")
            try:
                yield Setup(server, bus, home, root)
            finally:
                await bus.close()


def merge_results(values: dict[str, Any]) -> dict[str, Any]:
    """Merge ``values`` into bench/results.json and return the whole file."""
    current: dict[str, Any] = {}
    if RESULTS.exists():
        try:
            current = json.loads(RESULTS.read_text())
        except ValueError:
            current = {}
    current.update(values)
    RESULTS.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    return current


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
