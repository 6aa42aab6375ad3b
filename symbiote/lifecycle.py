"""The shape every long-running component shares: ``run()`` / ``shutdown()`` / ``async with``."""

from __future__ import annotations

import asyncio
from typing import Self

__all__ = ["Service"]


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
