"""``Projections``: the one component the runtime starts for everything in this package.

It applies the migrations, runs the live :class:`~symbiote.projections.projector.Projector`
(restarting it after a failure such as PostgreSQL or NATS going away: it resumes from its
checkpoint) and the :class:`~symbiote.projections.checkpoints.Checkpointer`, and exposes the
:class:`~symbiote.projections.memory.MemoryStore` (usable at once; it connects on first use).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import structlog

from symbiote.bus.stream import Bus
from symbiote.errors import BusError, StoreError
from symbiote.lifecycle import cancel_and_wait
from symbiote.projections.checkpoints import Checkpointer
from symbiote.projections.db import DB_ERRORS, apply_migrations, connect
from symbiote.projections.memory import MemoryStore
from symbiote.projections.projector import Projector
from symbiote.signers.keys import SigningKey

__all__ = ["Projections"]

log = structlog.get_logger("symbiote.projections")


class Projections:
    """Long-running component: ``async with Projections(...)`` (or ``run()`` / ``shutdown()``).

    ``__aenter__`` applies the migrations first, so a database problem surfaces there; then
    the projector and the checkpointer run in the background until ``__aexit__``.
    """

    def __init__(
        self,
        bus: Bus,
        dsn: str,
        runtime_key: SigningKey,
        checkpoint_dir: Path,
        *,
        checkpoint_interval_s: float = 10.0,
        checkpoint_idle_s: float = 2.0,
        schema: str = "public",
        restart_backoff_s: float = 1.0,
        drain_s: float = 10.0,
    ) -> None:
        self.bus = bus
        self.dsn = dsn
        self.schema = schema
        self.restart_backoff_s = restart_backoff_s
        self.drain_s = drain_s
        self.memory = MemoryStore(dsn, schema=schema)
        self.checkpointer = Checkpointer(
            bus,
            runtime_key,
            checkpoint_dir,
            dsn=dsn,
            schema=schema,
            interval_s=checkpoint_interval_s,
            idle_s=checkpoint_idle_s,
        )
        self.projector: Projector | None = None
        self.restarts = 0
        self.failures = 0  # restarts after an unexpected error (not a lost connection)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def position(self) -> int:
        """The last stream sequence the live projector has committed."""
        return self.projector.position if self.projector is not None else 0

    async def migrate(self) -> None:
        """Apply the schema migrations (idempotent)."""
        conn = await connect(self.dsn, self.schema)
        try:
            await apply_migrations(conn, self.schema)
        finally:
            with contextlib.suppress(*DB_ERRORS):
                await conn.close()

    async def run(self) -> None:
        """Run the projector (restarted after failures) and the checkpointer until :meth:`shutdown`."""
        checkpoints = asyncio.create_task(self.checkpointer.run(), name="checkpointer")
        failed_at = -1  # the position the projector last failed at
        try:
            while not self._stop.is_set():
                self.projector = Projector(self.bus, self.dsn, schema=self.schema)
                task = asyncio.create_task(self.projector.run(), name="projector")
                stop = asyncio.create_task(self._stop.wait())
                await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
                await cancel_and_wait([stop])
                if self._stop.is_set():
                    self.projector.shutdown()
                backoff = self.restart_backoff_s
                try:
                    await task
                except (StoreError, BusError) as exc:
                    if self._stop.is_set():
                        break
                    log.warning("projector.restart", error=str(exc), backoff_s=backoff)
                except Exception:  # a bug, or an event the fold cannot take
                    # the runtime goes on dispatching and checkpointing; the projector is retried,
                    # more and more slowly while it makes no progress, and each failure is logged
                    # with its traceback
                    if self._stop.is_set():  # stopping anyway: say why it failed, and stop cleanly
                        log.exception("projector.failed_while_stopping")
                        break
                    if self.projector.position > failed_at:
                        self.failures = 0  # it got further this time: not the same wall
                    failed_at = max(failed_at, self.projector.position)
                    backoff = min(60.0, self.restart_backoff_s * 2 ** min(self.failures, 6))
                    self.failures += 1
                    log.exception("projector.failed", failures=self.failures, backoff_s=backoff)
                else:
                    continue
                self.restarts += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff)
        finally:
            # the final checkpoint first, then let the projector take it in, so that a clean
            # stop leaves the projections at the end of the log
            self.checkpointer.shutdown()
            try:
                await checkpoints
                await self._drain()
            finally:
                await self.memory.close()

    async def _drain(self) -> None:
        projector = self.projector
        if projector is None or not self.drain_s:
            return
        try:
            last = await self.bus.last_seq()
        except BusError:
            return
        if projector.position >= last:
            return
        restarted = Projector(self.bus, self.dsn, schema=self.schema, follow=False, until_seq=last)
        try:
            await asyncio.wait_for(restarted.run(), self.drain_s)
        except (StoreError, BusError, TimeoutError) as exc:
            log.warning("projector.drain_incomplete", error=str(exc), last=last)
        except Exception:  # the event the live projector failed on (logged there): stop cleanly anyway
            log.exception("projector.drain_failed", last=last)
        else:
            self.projector = restarted

    async def wait_for(self, seq: int, timeout: float = 30.0) -> bool:
        """Wait until the live projections include ``seq``; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.position < seq:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            projector = self.projector
            if projector is None:
                await asyncio.sleep(min(0.05, remaining))
            else:
                await projector.wait_for(seq, min(remaining, 0.5))
        return True

    def shutdown(self) -> None:
        """Stop projecting and checkpointing (a final checkpoint is made); idempotent."""
        self._stop.set()
        if self.projector is not None:
            self.projector.shutdown()
        self.checkpointer.shutdown()

    async def __aenter__(self) -> Projections:
        await self.migrate()
        self._task = asyncio.create_task(self.run(), name="projections")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.shutdown()
        if self._task is not None:
            task, self._task = self._task, None
            await task
