"""The projector: folds the stream, in order, into the projection tables of one schema.

It reads ``sym.>`` with an ordered ephemeral consumer (:meth:`Bus.read`) from the position
after its checkpoint, decodes and verifies each batch (signatures in worker threads), folds
it (:class:`~symbiote.projections.fold.Folder`), embeds the texts to remember, and writes
all rows of the batch *and* the new checkpoint in one transaction. A crash at any point
(process killed, PostgreSQL gone) rolls the open transaction back, and the next start
resumes after the last committed checkpoint: no event is applied twice or skipped. The
checkpoint update also checks the previous value, so two projectors writing the same
schema cannot both advance it.

Stages overlap: while batch N is written, batch N+1 is decoded and folded. Batches that pile
up while a transaction runs are written together in the next one, so under load a live
projector commits fewer, larger transactions instead of falling behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import nats.errors
import numpy as np
import structlog

from symbiote.bus.reader import raise_if_cancelling
from symbiote.bus.stream import Bus, StoredMsg
from symbiote.errors import BusError, StoreError
from symbiote.lifecycle import cancel_and_wait
from symbiote.projections.db import DB_ERRORS, apply_migrations, connect, translate
from symbiote.projections.fold import (
    APPROVAL_COLUMNS,
    COMMAND_COLUMNS,
    EVENT_COLUMNS,
    KEY_COLUMNS,
    MEMORY_COLUMNS,
    REGISTRY_COLUMNS,
    Folder,
    Rows,
)
from symbiote.projections.verify import Decoded, WorkerPool

__all__ = ["CommitHook", "Projector", "ProjectorStats", "read_checkpoint"]

log = structlog.get_logger("symbiote.projections")
T = TypeVar("T")
CommitHook = Callable[[int, int, int], None]
"""Called after each commit with (first_seq, last_seq, count) of the batch written."""
_END = StoredMsg(0, "", b"")
_Batch = tuple[Rows, "asyncio.Task[Any] | None"]  # a folded batch and the embedding of its memory texts
_READ_ERRORS = (nats.errors.Error, BusError, OSError, TimeoutError)


@dataclass
class ProjectorStats:
    """What a projector run did."""

    events: int = 0
    batches: int = 0
    last_seq: int = 0
    memory_rows: int = 0
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)  # seconds spent per stage

    def add(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - since
        return now

    @property
    def per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def read_checkpoint(conn: asyncpg.Connection, name: str = "main") -> int:
    """The last stream sequence projected by projection ``name`` in the connection's schema (0 if none)."""
    with translate("read checkpoint", projection=name):
        value = await conn.fetchval("SELECT last_seq FROM projection_checkpoints WHERE name = $1", name)
    return int(value or 0)


class Projector:
    """Long-running component: ``run()`` until ``shutdown()`` (or the end, with ``follow=False``).

    ``schema`` is the target schema (migrated on start); ``from_seq`` is where a projection
    that has no checkpoint yet begins (``replay --from``); ``until_seq`` stops after that
    sequence. ``on_commit`` observes each committed batch.
    """

    def __init__(
        self,
        bus: Bus,
        dsn: str,
        *,
        schema: str = "public",
        name: str = "main",
        follow: bool = True,
        from_seq: int = 1,
        until_seq: int | None = None,
        batch: int = 2048,
        memory: bool = True,
        workers: WorkerPool | None = None,
        on_commit: CommitHook | None = None,
        queue_size: int = 50_000,
    ) -> None:
        self.bus = bus
        self.dsn = dsn
        self.schema = schema
        self.name = name
        self.follow = follow
        self.from_seq = max(1, from_seq)
        self.until_seq = until_seq
        self.batch = batch
        self.memory = memory
        # a replay or an audit sends even its small batches (the reader's pace) to the workers
        self.workers = workers or WorkerPool(inline=1024 if follow else 64)
        self._own_workers = workers is None
        self.on_commit = on_commit
        self.stats = ProjectorStats()
        self.position = 0  # last committed stream sequence
        self._queue: asyncio.Queue[StoredMsg] = asyncio.Queue(queue_size)
        self._stop = asyncio.Event()
        self._advanced = asyncio.Condition()
        self._task: asyncio.Task[ProjectorStats] | None = None
        self._helpers: set[asyncio.Task[Any]] = set()  # decoding and embedding under way
        self._lookup: asyncpg.Connection | None = None

    # -- lifecycle --------------------------------------------------------------------------
    async def run(self) -> ProjectorStats:
        """Project until :meth:`shutdown` (or, with ``follow=False``, to the end / ``until_seq``)."""
        started = time.perf_counter()
        conn = await connect(self.dsn, self.schema, durable_commits=False)
        tasks: list[asyncio.Task[Any]] = []
        try:
            await apply_migrations(conn, self.schema)
            self.position, origin = await self._load_checkpoint(conn)
            folder = Folder(self.bus, memory=self.memory)
            if origin == 1 and self.position > 0:
                self._lookup = await connect(self.dsn, self.schema)
            await folder.prime(self.position)
            if self._own_workers:
                self.workers.start(embedding=self.memory)  # fork now, before other threads exist
            writes: asyncio.Queue[_Batch | None] = asyncio.Queue(3)
            writer = asyncio.create_task(self._write_loop(conn, writes), name=f"projector-write-{self.schema}")
            stop = asyncio.create_task(self._stop.wait())
            tasks = [
                writer,
                stop,
                asyncio.create_task(self._read(self.position), name=f"projector-read-{self.schema}"),
                asyncio.create_task(self._fold_loop(folder, writes), name=f"projector-fold-{self.schema}"),
            ]
            pending: set[asyncio.Task[Any]] = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not stop and not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                if stop in done or writer in done:
                    break
        finally:
            await cancel_and_wait(tasks)  # failures were raised above
            helpers, self._helpers = list(self._helpers), set()
            await cancel_and_wait(helpers)  # the decoding and embedding the stages left going
            with contextlib.suppress(*DB_ERRORS):
                await conn.close()
            lookup, self._lookup = self._lookup, None
            if lookup is not None:
                with contextlib.suppress(*DB_ERRORS):
                    await lookup.close()
            if self._own_workers:
                self.workers.close()
            self.stats.seconds = time.perf_counter() - started
        return self.stats

    def shutdown(self) -> None:
        """Stop after the batch in hand; idempotent."""
        self._stop.set()

    async def __aenter__(self) -> Projector:
        self._task = asyncio.create_task(self.run(), name=f"projector-{self.schema}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.shutdown()
        if self._task is not None:
            task, self._task = self._task, None
            await task

    async def wait_for(self, seq: int, timeout: float = 30.0) -> bool:
        """Wait until everything up to ``seq`` is committed; False on timeout."""
        async with self._advanced:
            try:
                await asyncio.wait_for(self._advanced.wait_for(lambda: self.position >= seq), timeout)
            except TimeoutError:
                return False
        return True

    # -- stages -----------------------------------------------------------------------------
    async def _load_checkpoint(self, conn: asyncpg.Connection) -> tuple[int, int]:
        """(last projected sequence, the sequence the projection began at)."""
        with translate("create checkpoint", projection=self.name):
            await conn.execute(
                "INSERT INTO projection_checkpoints (name, last_seq, events, from_seq) VALUES ($1, $2, 0, $3) "
                "ON CONFLICT (name) DO NOTHING",
                self.name,
                self.from_seq - 1,
                self.from_seq,
            )
            row = await conn.fetchrow(
                "SELECT last_seq, from_seq FROM projection_checkpoints WHERE name = $1", self.name
            )
        assert row is not None
        return int(row["last_seq"]), int(row["from_seq"])

    async def _earlier(self, ids: list[str], before: int) -> set[str]:
        """Which commands have events before ``before``, from this schema's own events table."""
        assert self._lookup is not None
        with translate("look up command history", schema=self.schema):
            rows = await self._lookup.fetch(
                "SELECT DISTINCT command_id FROM events WHERE command_id = ANY($1::text[]) AND seq < $2", ids, before
            )
        return {r["command_id"] for r in rows}

    async def _read(self, after: int) -> None:
        """Feed the queue with messages after ``after``, in order; re-open the read after an error."""
        position = after
        backoff = 0.1
        while not self._stop.is_set():
            if self.until_seq is not None and position >= self.until_seq:
                break
            try:
                stream = self.bus.read("sym.>", from_seq=position + 1, follow=self.follow)
                async with contextlib.aclosing(stream) as messages:
                    async for msg in messages:
                        if msg.seq <= position:
                            continue
                        position = msg.seq
                        await self._queue.put(msg)
                        backoff = 0.1
                        if self.until_seq is not None and position >= self.until_seq:
                            break
                if not self.follow:
                    break
            except _READ_ERRORS as exc:
                raise_if_cancelling()
                if not self.follow:
                    raise BusError("cannot read the stream", error=repr(exc), after=position) from exc
                log.warning("projector.read_retry", error=repr(exc), after=position, backoff_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        await self._queue.put(_END)

    async def _fold_loop(self, folder: Folder, writes: asyncio.Queue[_Batch | None]) -> None:
        """Decode and check batch N+1 (in the worker processes) while batch N is folded here."""
        ahead: asyncio.Task[list[Decoded]] | None = None
        ended = False
        first = True
        while not (ended and ahead is None):
            msgs: list[StoredMsg] = []
            if not ended:
                if ahead is None:
                    msgs.append(await self._queue.get())
                while len(msgs) < self.batch and not self._queue.empty():
                    msgs.append(self._queue.get_nowait())
                if msgs and msgs[-1] is _END:
                    msgs.pop()
                    ended = True
            current = self._helper(self.workers.decode(msgs)) if msgs else None
            if ahead is not None:
                await self._fold_batch(folder, writes, ahead)
            elif first and ended and current is None:
                await self._fold_batch(folder, writes, None)  # nothing to read: still write primed rows
            first = False
            ahead = current
        await writes.put(None)

    def _helper(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task for ``work`` that :meth:`run` cancels and awaits if it is still going at the end."""
        task = asyncio.create_task(work)
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)
        return task

    async def _fold_batch(
        self, folder: Folder, writes: asyncio.Queue[_Batch | None], decoding: asyncio.Task[list[Decoded]] | None
    ) -> None:
        stats = self.stats
        mark = time.perf_counter()
        decoded = await decoding if decoding is not None else []
        mark = stats.add("decode", mark)
        await folder.prepare(decoded, earlier=self._earlier if self._lookup is not None else None)
        mark = stats.add("prepare", mark)
        rows = folder.fold(decoded)
        mark = stats.add("fold", mark)
        if not rows.empty or rows.count:
            # the texts are embedded (in the worker processes) while earlier batches are written
            embedding = self._helper(self.workers.embed([m.text for m in rows.memory])) if rows.memory else None
            await writes.put((rows, embedding))
            stats.add("wait_writer", mark)

    async def _write_loop(self, conn: asyncpg.Connection, writes: asyncio.Queue[_Batch | None]) -> None:
        """Write each folded batch with the checkpoint; the batches that piled up while a transaction
        ran go together in the next one (a live projector under load commits fewer, larger ones)."""
        ended = False
        while not ended:
            item = await writes.get()
            if item is None:
                return
            items = [item]
            while not writes.empty():
                more = writes.get_nowait()
                if more is None:
                    ended = True
                    break
                items.append(more)
            mark = time.perf_counter()
            rows = items[0][0]
            parts: list[Any] = []
            for later, embedding in items:
                if later is not rows:
                    rows.absorb(later)
                if embedding is not None:
                    parts.append(await embedding)
            vectors: Any = None
            if parts:
                vectors = parts[0] if len(parts) == 1 else np.concatenate(parts)
                mark = self.stats.add("embed", mark)
            await self._write(conn, rows, vectors)
            self.stats.add("write", mark)
            previous = self.position
            if rows.count:
                self.position = rows.last_seq
            self.stats.events += rows.count
            self.stats.batches += 1
            self.stats.last_seq = self.position
            self.stats.memory_rows += len(rows.memory)
            async with self._advanced:
                self._advanced.notify_all()
            if self.on_commit is not None and rows.count:
                self.on_commit(rows.first_seq, rows.last_seq, rows.count)
            if rows.count:
                log.debug("projector.committed", schema=self.schema, after=previous, through=self.position)

    async def _write(self, conn: asyncpg.Connection, rows: Rows, vectors: Any) -> None:
        schema = self.schema
        new_position = rows.last_seq if rows.count else self.position
        with translate("write projection batch", schema=schema, through=new_position):
            async with conn.transaction():
                if rows.events:
                    await conn.copy_records_to_table(
                        "events", records=rows.events, columns=EVENT_COLUMNS, schema_name=schema
                    )
                if rows.commands:
                    await conn.execute("DELETE FROM commands WHERE command_id = ANY($1::text[])", list(rows.commands))
                    await conn.copy_records_to_table(
                        "commands", records=list(rows.commands.values()), columns=COMMAND_COLUMNS, schema_name=schema
                    )
                if rows.approvals:
                    await conn.copy_records_to_table(
                        "approvals", records=rows.approvals, columns=APPROVAL_COLUMNS, schema_name=schema
                    )
                if rows.keys:
                    await conn.execute("DELETE FROM keys WHERE kid = ANY($1::text[])", list(rows.keys))
                    await conn.copy_records_to_table(
                        "keys", records=list(rows.keys.values()), columns=KEY_COLUMNS, schema_name=schema
                    )
                if rows.registry:
                    await conn.execute("DELETE FROM registry WHERE name = ANY($1::text[])", list(rows.registry))
                    await conn.copy_records_to_table(
                        "registry", records=list(rows.registry.values()), columns=REGISTRY_COLUMNS, schema_name=schema
                    )
                if rows.memory and vectors is not None:
                    records = [
                        (m.seq, m.kind, m.event_id, m.command_id, m.actor, m.corr, m.at, m.text, vectors[i])
                        for i, m in enumerate(rows.memory)
                    ]
                    await conn.copy_records_to_table(
                        "memory", records=records, columns=MEMORY_COLUMNS, schema_name=schema
                    )
                status = await conn.execute(
                    "UPDATE projection_checkpoints SET last_seq = $1, events = events + $2 "
                    "WHERE name = $3 AND last_seq = $4",
                    new_position,
                    rows.count,
                    self.name,
                    self.position,
                )
                if status != "UPDATE 1":
                    raise StoreError(
                        "the projection checkpoint moved under us (another projector writes this schema?)",
                        schema=schema,
                        expected=self.position,
                    )
