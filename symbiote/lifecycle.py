"""The shape every long-running component shares: ``run()`` / ``shutdown()`` / ``async with``."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine, Iterable
from typing import Any, Self, TypeVar

T = TypeVar("T")

__all__ = ["Service", "Stopped", "cancel_and_wait", "tune_gc", "unless_stopped"]


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has ended; what they raise is dropped (the caller
    has already taken the failure it cares about, or is tearing down)."""
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


class Stopped(Exception):
    """:func:`unless_stopped` gave up: the stop was asked for first."""


async def unless_stopped(stop: asyncio.Event, call: Coroutine[Any, Any, T]) -> T:
    """Await ``call`` unless ``stop`` is set first: then cancel it and raise :class:`Stopped`.
    What ``call`` raises is raised here."""
    task = asyncio.ensure_future(call)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait([stopping] if task.done() else [task, stopping])
    if task.cancelled():
        raise Stopped
    return task.result()


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
