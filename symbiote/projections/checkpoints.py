"""Signed checkpoints of the log (``audit.checkpoint`` events), kept in NATS and outside it.

Definition (normative for :func:`compute_root` and the audit):

* A checkpoint covers every message of the stream whose subject is **not**
  ``sym.audit.checkpoint`` (checkpoint events never cover themselves or each other), with
  a sequence in ``[first_seq, last_seq]``. ``first_seq`` is the previous checkpoint's
  ``last_seq + 1`` (1 for the first); ``last_seq`` is the last covered message; ``count``
  is the number of covered messages present in that range when it was signed.
* Each covered message at sequence ``s`` contributes the entry
  ``e(s) = SHA-256(u64be(s) ‖ SHA-256(subject) ‖ SHA-256(stored bytes))`` — the raw bytes,
  so signatures and undecodable messages are covered too.
* ``h₀ = SHA-256("symbiote/checkpoint/v1\\0" ‖ prev)``, with ``prev`` = the previous
  checkpoint's ``root`` (32 zero bytes for the first, where the event says ``prev = None``);
  ``hᵢ = SHA-256(hᵢ₋₁ ‖ e(sᵢ))`` over the covered messages in ascending order;
  ``root = h_count``. Each root therefore commits to the whole log before it.
* The event is signed by the runtime key (actor ``runtime:main``) and published on
  ``sym.audit.checkpoint`` with optimistic concurrency on that subject, so two
  checkpointers cannot fork the chain. Each checkpoint is also written to a JSON file
  ``<checkpoint_dir>/<seq:012d>.json`` (``seq`` = the checkpoint event's own stream
  sequence; the file holds the signed wire bytes) and to PostgreSQL
  (``audit_checkpoints``), outside NATS.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import nats.errors
import structlog

from symbiote.bus.envelope import Envelope, from_wire, make_event
from symbiote.bus.events import AuditCheckpoint, parse_body
from symbiote.bus.stream import Bus
from symbiote.errors import BusError, ConflictError, DecodeError, StoreError, SymbioteError
from symbiote.files import write_atomic
from symbiote.lifecycle import Stopped, unless_stopped
from symbiote.projections.db import DB_ERRORS, apply_migrations, connect, translate
from symbiote.projections.verify import CHECKPOINT_SUBJECT, entry_hash, reading
from symbiote.registry.follower import RegistryFollower
from symbiote.signers.keys import SigningKey, sign_event

__all__ = [
    "CHECKPOINT_SUBJECT",
    "ROOT_DOMAIN",
    "CheckpointRecord",
    "Checkpointer",
    "chain_seed",
    "chain_step",
    "compute_root",
    "load_checkpoint_files",
    "load_checkpoint_rows",
    "projected_through",
    "write_checkpoint_file",
]

ROOT_DOMAIN = b"symbiote/checkpoint/v1\x00"
_ZERO = bytes(32)
FILE_FORMAT = "symbiote-checkpoint/v1"
log = structlog.get_logger("symbiote.checkpoints")
_BUS_ERRORS = (BusError, nats.errors.Error, OSError, TimeoutError)


def chain_seed(prev: bytes | None) -> bytes:
    """``h₀`` of a checkpoint whose predecessor's root is ``prev`` (None for the first)."""
    return hashlib.sha256(ROOT_DOMAIN + (prev or _ZERO)).digest()


def chain_step(h: bytes, entry: bytes) -> bytes:
    """``hᵢ = SHA-256(hᵢ₋₁ ‖ e(sᵢ))``."""
    return hashlib.sha256(h + entry).digest()


def compute_root(prev: bytes | None, entries: Iterable[bytes]) -> bytes:
    """The root over covered entries ``e(s)`` (see :func:`~symbiote.projections.verify.entry_hash`), in order."""
    h = chain_seed(prev)
    for entry in entries:
        h = chain_step(h, entry)
    return h


@dataclass(frozen=True)
class CheckpointRecord:
    """One signed checkpoint as found in the stream or in a file."""

    seq: int  # stream sequence of the audit.checkpoint event itself
    event_id: str
    first_seq: int
    last_seq: int
    count: int
    root: bytes
    prev: bytes | None
    at: int
    actor: str
    kid: str
    wire: bytes

    @classmethod
    def from_wire(cls, seq: int, wire: bytes) -> tuple[CheckpointRecord, Envelope]:
        """Decode a checkpoint event; raise :class:`DecodeError` if it is not one."""
        event = from_wire(wire)
        if event.type != AuditCheckpoint.TYPE:
            raise DecodeError("not an audit.checkpoint event", event_id=event.id, type=event.type)
        body = parse_body(event)
        assert isinstance(body, AuditCheckpoint)
        record = cls(
            seq=seq,
            event_id=event.id,
            first_seq=body.first_seq,
            last_seq=body.last_seq,
            count=body.count,
            root=body.root,
            prev=body.prev,
            at=event.at,
            actor=event.actor,
            kid=event.sigs[0].kid if event.sigs else "",
            wire=wire,
        )
        return record, event

    def to_json(self) -> dict[str, Any]:
        """The file form (the wire bytes are what counts; the rest is for people)."""
        return {
            "format": FILE_FORMAT,
            "seq": self.seq,
            "event_id": self.event_id,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "count": self.count,
            "root": self.root.hex(),
            "prev": self.prev.hex() if self.prev is not None else None,
            "at": self.at,
            "actor": self.actor,
            "kid": self.kid,
            "wire": base64.b64encode(self.wire).decode("ascii"),
        }


def _file_name(seq: int) -> str:
    return f"{seq:012d}.json"


def write_checkpoint_file(directory: Path, record: CheckpointRecord) -> Path:
    """Write ``record`` atomically (fsynced) unless an identical file exists; return its path.

    An existing file with different contents is never overwritten: raise :class:`StoreError`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / _file_name(record.seq)
    data = (json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n").encode()
    if path.exists():
        if path.read_bytes() == data:
            return path
        raise StoreError("a different checkpoint file already exists", path=str(path))
    write_atomic(path, data, mode=0o644, durable=True)
    return path


def load_checkpoint_files(directory: Path) -> tuple[list[CheckpointRecord], list[tuple[str, str]]]:
    """Every checkpoint file in ``directory`` (by sequence), and (file name, problem) for bad ones."""
    records: list[CheckpointRecord] = []
    problems: list[tuple[str, str]] = []
    if not directory.is_dir():
        return records, problems
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or type(data.get("seq")) is not int or not isinstance(data.get("wire"), str):
                raise ValueError("not a map with an integer seq and the signed event's bytes")
            wire = base64.b64decode(data["wire"], validate=True)
            record, _ = CheckpointRecord.from_wire(data["seq"], wire)
        except (OSError, ValueError, RecursionError, DecodeError) as exc:  # RecursionError: nested too deep
            problems.append((path.name, f"unreadable checkpoint file: {exc}"))
            continue
        if path.name != _file_name(record.seq):
            problems.append((path.name, f"file name does not match the checkpoint's sequence {record.seq}"))
        shown = record.to_json()
        for key in ("event_id", "first_seq", "last_seq", "count", "root", "prev"):
            if data.get(key) != shown[key]:
                problems.append((path.name, f"field {key} differs from the signed event it holds"))
                break
        records.append(record)
    records.sort(key=lambda r: r.seq)
    return records, problems


_Loaded = tuple[list[CheckpointRecord], list[tuple[str, str]]]


async def projected_through(dsn: str, schema: str = "public") -> tuple[int, bytes | None]:
    """The last stream sequence the projections in ``schema`` folded (0 when there are none), and
    the SHA-256 of the message they folded there: the log reached at least that far, with that
    message there, which an audit holds against a stream made anew."""
    conn = await connect(dsn, schema)
    try:
        with translate("read the projections' position", schema=schema):
            table = await conn.fetchval("SELECT to_regclass(quote_ident($1) || '.projection_checkpoints')", schema)
            if table is None:
                return 0, None
            folded = int(await conn.fetchval("SELECT coalesce(max(last_seq), 0) FROM projection_checkpoints"))
            raw = await conn.fetchval("SELECT raw_sha256 FROM events WHERE seq = $1", folded) if folded else None
            return folded, bytes(raw) if raw is not None else None
    finally:
        with contextlib.suppress(*DB_ERRORS):
            await conn.close()


async def load_checkpoint_rows(dsn: str, schema: str = "public") -> _Loaded:
    """Every checkpoint copied to PostgreSQL (``audit_checkpoints``), by sequence, and (row, problem)
    for bad ones; none when the table does not exist (no projections there yet)."""
    records: list[CheckpointRecord] = []
    problems: list[tuple[str, str]] = []
    conn = await connect(dsn, schema)
    try:
        with translate("read the checkpoint copies", schema=schema):
            if not await conn.fetchval("SELECT to_regclass('audit_checkpoints') IS NOT NULL"):
                return records, problems
            rows = await conn.fetch(
                "SELECT seq, first_seq, last_seq, count, root, prev, wire FROM audit_checkpoints ORDER BY seq"
            )
    finally:
        with contextlib.suppress(*DB_ERRORS):
            await conn.close()
    for row in rows:
        name = f"row seq {row['seq']}"
        try:
            record, _ = CheckpointRecord.from_wire(int(row["seq"]), bytes(row["wire"]))
        except DecodeError as exc:
            problems.append((name, f"unreadable checkpoint: {exc}"))
            continue
        prev = bytes(row["prev"]) if row["prev"] is not None else None
        stored = (row["first_seq"], row["last_seq"], row["count"], bytes(row["root"]), prev)
        if stored != (record.first_seq, record.last_seq, record.count, record.root, record.prev):
            problems.append((name, "its columns differ from the signed event it holds"))
        records.append(record)
    return records, problems


class Checkpointer:
    """Long-running component publishing signed checkpoints on a schedule and when the log goes idle.

    ``run()`` until ``shutdown()`` (or ``async with``); ``checkpoint_now()`` makes one at once.
    With ``final=True`` a last checkpoint is made when it stops.
    """

    def __init__(
        self,
        bus: Bus,
        key: SigningKey,
        checkpoint_dir: Path,
        *,
        dsn: str | None = None,
        schema: str = "public",
        interval_s: float = 10.0,
        idle_s: float = 2.0,
        poll_s: float = 0.25,
        final: bool = True,
    ) -> None:
        if key.role != "runtime":
            raise SymbioteError("checkpoints are signed with a runtime key", principal=key.principal)
        self.bus = bus
        self.key = key
        self.checkpoint_dir = checkpoint_dir
        self.dsn = dsn
        self.schema = schema
        self.interval_s = interval_s
        self.idle_s = idle_s
        self.poll_s = poll_s
        self.final = final
        self.last: CheckpointRecord | None = None
        self.published = 0
        self._subject_last = 0  # stream sequence of the last message on the checkpoint subject
        self._scanned = 0  # every message up to here is folded into the pending chain
        self._pending_h = chain_seed(None)
        self._pending_count = 0
        self._pending_last = 0
        self._loaded = False
        self._conn: asyncpg.Connection | None = None
        self._unsaved_files: list[CheckpointRecord] = []
        self._unsaved_pg: list[CheckpointRecord] = []
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------
    async def run(self) -> None:
        """Checkpoint every ``interval_s`` and after ``idle_s`` without new events, until :meth:`shutdown`.

        Shutting down cancels a checkpoint in flight (NATS gone away would hold it for minutes of
        retries; one cut short is taken up on the next start: the stream is the truth), then
        makes a final one, bounded, when ``final`` and NATS is there to take it."""
        try:
            await unless_stopped(self._stop, self._schedule())
        except Stopped:
            pass
        finally:
            try:
                if self.final and self.bus.connected:
                    try:
                        await asyncio.wait_for(self.checkpoint_now(), 10)
                    except (*_BUS_ERRORS, StoreError) as exc:
                        log.warning("checkpoint.final_failed", error=str(exc))
            finally:
                await self._close_db()

    async def _schedule(self) -> None:
        last_time = time.monotonic()
        last_seen = -1
        last_change = time.monotonic()
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                state = await self.bus.stream_state()
                now = time.monotonic()
                last = int(state.last_seq or 0)
                if last != last_seen:
                    last_seen, last_change = last, now
                if last <= self._scanned and not self._pending_count:
                    last_time = now  # nothing new: the schedule restarts with the next event
                    continue
                if now - last_time >= self.interval_s or now - last_change >= self.idle_s:
                    await self.checkpoint_now()
                    last_time = time.monotonic()
            except (*_BUS_ERRORS, StoreError) as exc:
                log.warning("checkpoint.retry_later", error=str(exc))

    def shutdown(self) -> None:
        """Stop (after a final checkpoint when ``final``); idempotent."""
        self._stop.set()

    async def __aenter__(self) -> Checkpointer:
        self._task = asyncio.create_task(self.run(), name="checkpointer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.shutdown()
        if self._task is not None:
            task, self._task = self._task, None
            await task

    # -- checkpoints ------------------------------------------------------------------------
    async def checkpoint_now(self) -> CheckpointRecord | None:
        """Cover everything published so far; None when nothing new needs covering."""
        async with self._lock:
            if not self._loaded:
                await self._load()
            await self._save_unsaved()
            target = await self.bus.last_seq()
            await self._scan(target)
            if not self._pending_count:
                return None
            previous = self.last
            body = AuditCheckpoint(
                first_seq=previous.last_seq + 1 if previous else 1,
                last_seq=self._pending_last,
                root=self._pending_h,
                prev=previous.root if previous else None,
                count=self._pending_count,
            )
            event = sign_event(make_event(AuditCheckpoint.TYPE, self.key.principal, body.to_map()), self.key)
            try:
                ack = await self.bus.publish(
                    event, expect_last_seq=self._subject_last, expect_subject=CHECKPOINT_SUBJECT
                )
            except ConflictError:
                log.warning("checkpoint.conflict", note="another checkpointer wrote first; reloading")
                self._loaded = False
                return None
            record, _ = CheckpointRecord.from_wire(ack.seq, event.to_wire())
            self._advance(record)
            self.published += 1
            log.info(
                "checkpoint.published", seq=record.seq, first=record.first_seq, last=record.last_seq, count=record.count
            )
            self._unsaved_files.append(record)
            if self.dsn is not None:
                self._unsaved_pg.append(record)
            await self._save_unsaved()
            return record

    def _advance(self, record: CheckpointRecord) -> None:
        self.last = record
        self._subject_last = max(self._subject_last, record.seq)
        self._pending_h = chain_seed(record.root)
        self._pending_count = 0
        self._pending_last = record.last_seq
        self._scanned = max(self._scanned, record.last_seq)

    async def _scan(self, target: int) -> None:
        if target <= self._scanned:
            return
        async with reading(self.bus, "sym.>", from_seq=self._scanned + 1) as messages:
            async for msg in messages:
                if msg.seq > target:
                    break
                self._scanned = msg.seq
                if msg.subject == CHECKPOINT_SUBJECT:
                    self._subject_last = max(self._subject_last, msg.seq)
                    continue
                self._pending_h = chain_step(self._pending_h, entry_hash(msg.seq, msg.subject, msg.data))
                self._pending_count += 1
                self._pending_last = msg.seq
        # only what was read is covered: were the read to end early, the rest is read next time

    async def _load(self) -> None:
        """Find the last valid checkpoint in the stream and continue its chain."""
        follower = RegistryFollower(self.bus)
        valid: list[CheckpointRecord] = []
        self._subject_last = 0
        async with reading(self.bus, CHECKPOINT_SUBJECT) as messages:
            async for msg in messages:
                self._subject_last = msg.seq
                try:
                    record, event = CheckpointRecord.from_wire(msg.seq, msg.data)
                except DecodeError as exc:
                    log.warning("checkpoint.ignored", seq=msg.seq, error=str(exc))
                    continue
                state = await follower.ensure_through(msg.seq)
                verdict = state.keyring.verify(event, msg.seq)
                previous = valid[-1] if valid else None
                expected_first = previous.last_seq + 1 if previous else 1
                expected_prev = previous.root if previous else None
                if not verdict.ok or any(c.role != "runtime" for c in verdict.checks):
                    log.warning("checkpoint.ignored", seq=msg.seq, error=f"not runtime-signed: {verdict.detail}")
                elif record.first_seq != expected_first or record.prev != expected_prev:
                    log.warning("checkpoint.ignored", seq=msg.seq, error="does not continue the chain")
                else:
                    valid.append(record)
        self.last = valid[-1] if valid else None
        self._pending_h = chain_seed(self.last.root if self.last else None)
        self._pending_count = 0
        self._pending_last = self.last.last_seq if self.last else 0
        self._scanned = self._pending_last
        self._loaded = True
        # a crash between publishing and saving loses at most the newest copy: restore that one
        if self.last is not None and not (self.checkpoint_dir / _file_name(self.last.seq)).exists():
            self._unsaved_files.append(self.last)
        if self.dsn is not None:
            self._unsaved_pg = list(valid)

    async def _save_unsaved(self) -> None:
        """Write pending records to files (always) and to PostgreSQL (when configured)."""
        while self._unsaved_files:
            record = self._unsaved_files[0]
            try:
                await asyncio.to_thread(write_checkpoint_file, self.checkpoint_dir, record)
            except OSError as exc:
                raise StoreError("cannot write checkpoint file", dir=str(self.checkpoint_dir), error=str(exc)) from exc
            except StoreError as exc:
                log.error("checkpoint.file_conflict", seq=record.seq, error=str(exc))
            self._unsaved_files.pop(0)
        if not self._unsaved_pg:
            return
        try:
            conn = await self._db()
            with translate("save checkpoints", schema=self.schema):
                await conn.executemany(
                    "INSERT INTO audit_checkpoints (seq, event_id, first_seq, last_seq, count, root, prev, at, kid, "
                    "wire) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (seq) DO NOTHING",
                    [
                        (r.seq, r.event_id, r.first_seq, r.last_seq, r.count, r.root, r.prev, r.at, r.kid, r.wire)
                        for r in self._unsaved_pg
                    ],
                )
        except StoreError as exc:
            await self._close_db()  # the files are written; PostgreSQL gets these next time
            log.warning("checkpoint.db_later", error=str(exc), pending=len(self._unsaved_pg))
            return
        self._unsaved_pg = []

    async def _db(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            assert self.dsn is not None
            conn = await connect(self.dsn, self.schema)
            try:
                await apply_migrations(conn, self.schema)
            except StoreError:
                with contextlib.suppress(*DB_ERRORS):
                    await conn.close()
                raise
            self._conn = conn
        return self._conn

    async def _close_db(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(*DB_ERRORS):
                await conn.close()
