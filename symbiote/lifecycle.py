"""The shape every long-running component shares: ``run()`` / ``shutdown()`` / ``async with``."""

from __future__ import annotations

import asyncio
import gc
from typing import Self

__all__ = ["Service", "tune_gc"]


class Service:
    """``async with component:`` prepares it, runs :meth:`run` as a task, and on exit calls
    :meth:`shutdown` (idempotent) and awaits the task, so its first failure is re-raised."""

    _service_task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        raise NotImplementedError

    async def prepare(self) -> None:
        """Work to finish before ``async with`` returns (e.g. creating a durable consumer)."""

    async def __aenter__(self) -> Self:
        await self.prepare()
        self._service_task = asyncio.create_task(self.run(), name=type(self).__name__)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.shutdown()
        task, self._service_task = self._service_task, None
        if task is not None:
            await task


def tune_gc() -> None:
    """Collect garbage less often, and never re-scan what start-up allocated.

    A long-running component holds many long-lived objects (registry state, compiled models);
    CPython's default thresholds make full collections over them frequent and slow, which shows
    as latency spikes of a hundred milliseconds and more under load. Called once at start.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
