"""Replay: rebuild every projection from the log into a fresh schema and prove it equal to the live one.

The replay runs the same :class:`~symbiote.projections.projector.Projector` as the live
service, in big transactions, into a new schema. The indexes that enforce nothing (the HNSW
graph of ``memory`` among them) are dropped for the bulk load: a schema that is kept gets
them built once at the end instead of row by row; a schema that is only compared and then
dropped never needs them (the digests read whole tables in primary-key order), and its
tables are UNLOGGED. It then compares a digest per table with the live schema at the same stream position:

``digest(table) = SHA-256( SHA-256(row₁ as text) ‖ SHA-256(row₂ as text) ‖ … )``

with the rows in primary-key order (PostgreSQL's own text form of the whole row, so every
column counts). With ``--from SEQ`` only rows touched at or after ``SEQ`` are compared
(``events``, ``approvals`` and ``memory`` by ``seq``, ``commands`` by ``last_seq``); the key
registry and command definitions are always folded from the head, so they compare whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from symbiote.bus.stream import Bus
from symbiote.embeddings import load_embedder
from symbiote.errors import ConfigError, StoreError
from symbiote.projections.db import (
    DB_ERRORS,
    apply_migrations,
    check_schema_name,
    connect,
    connection,
    quote_ident,
    schema_exists,
    translate,
)
from symbiote.projections.projector import Projector, read_checkpoint

__all__ = ["DIGEST_TABLES", "ReplayReport", "TableDigest", "drop_replay", "replay", "table_digests"]

DIGEST_TABLES: dict[str, tuple[str, str | None]] = {
    "events": ("seq", "seq"),
    "commands": ("command_id", "last_seq"),
    "approvals": ("seq", "seq"),
    "keys": ("kid", None),
    "registry": ("name", None),
    "memory": ("seq", "seq"),
}
"""Digested tables: (ordering key, the sequence column a ``--from`` replay filters on)."""


@dataclass(frozen=True)
class TableDigest:
    """Row count and digest of one table (see the module doc)."""

    table: str
    rows: int
    digest: str


async def table_digests(conn: asyncpg.Connection, *, min_seq: int = 1) -> dict[str, TableDigest]:
    """The digest of every projection table in the connection's schema (rows from ``min_seq`` on)."""
    found: dict[str, TableDigest] = {}
    with translate("digest tables"):
        for table, (key, seq_column) in DIGEST_TABLES.items():
            where = f"WHERE t.{seq_column} >= $1" if seq_column is not None and min_seq > 1 else ""
            args: list[Any] = [min_seq] if where else []
            rows_hash = "sha256(coalesce(string_agg(sha256(convert_to(t::text, 'UTF8')), ''::bytea"
            # table and key names are the constants above
            select = f"SELECT count(*) AS n, encode({rows_hash} ORDER BY t.{key}), ''::bytea)), 'hex') AS digest "
            query = select + f"FROM {table} t {where}"
            row = await conn.fetchrow(query, *args)
            assert row is not None
            found[table] = TableDigest(table, int(row["n"]), str(row["digest"]))
    return found


@dataclass
class ReplayReport:
    """What a replay built and whether it equals the live projections."""

    schema: str
    from_seq: int
    through_seq: int = 0
    events: int = 0
    seconds: float = 0.0  # rebuilding (and comparing): what ``per_s`` divides by
    setup_seconds: float = 0.0  # before that: the schema, its migrations, loading the embedding model
    kept: bool = False
    compared: bool = False
    live_schema: str = "public"
    note: str = ""
    digests: dict[str, TableDigest] = field(default_factory=dict)
    live: dict[str, TableDigest] = field(default_factory=dict)

    @property
    def per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def mismatches(self) -> list[str]:
        """Tables whose digest differs from the live one."""
        if not self.compared:
            return []
        return [t for t, d in self.digests.items() if self.live.get(t) != d]

    @property
    def ok(self) -> bool:
        """The replay was compared with the live projections and every table is equal."""
        return self.compared and not self.mismatches

    def as_map(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "from_seq": self.from_seq,
            "through_seq": self.through_seq,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "setup_seconds": round(self.setup_seconds, 3),
            "per_s": round(self.per_s, 1),
            "kept": self.kept,
            "compared": self.compared,
            "ok": self.ok,
            "note": self.note,
            "mismatches": self.mismatches,
            "tables": {
                t: {
                    "rows": d.rows,
                    "digest": d.digest,
                    "live_rows": self.live[t].rows if t in self.live else None,
                    "live_digest": self.live[t].digest if t in self.live else None,
                }
                for t, d in self.digests.items()
            },
        }


async def _live_snapshot(dsn: str, schema: str, min_seq: int, name: str) -> tuple[int, dict[str, TableDigest]] | None:
    """(checkpoint, digests) of the live schema in one consistent snapshot; None if it has none."""
    conn = await connect(dsn, schema)
    try:
        if not await schema_exists(conn, schema):
            return None
        with translate("snapshot live projections", schema=schema):
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                exists = await conn.fetchval("SELECT to_regclass('projection_checkpoints') IS NOT NULL")
                if not exists:
                    return None
                position = await read_checkpoint(conn, name)
                return position, await table_digests(conn, min_seq=min_seq)
    finally:
        with contextlib.suppress(*DB_ERRORS):
            await conn.close()


async def replay(
    bus: Bus,
    dsn: str,
    *,
    into: str | None = None,
    from_seq: int = 1,
    live_schema: str = "public",
    compare: bool = True,
    keep: bool | None = None,
    progress: bool | Callable[[int, int], None] = False,
    console: Console | None = None,
    wait_live_s: float = 30.0,
    batch: int = 4096,
    name: str = "main",
) -> ReplayReport:
    """Rebuild every projection from the log (from ``from_seq``) into a fresh schema and compare.

    ``into`` names the new schema (kept afterwards); without it a temporary one is made and
    dropped at the end unless ``keep``. ``progress=True`` shows a rich progress bar; a
    callable receives ``(done, total)``. Waits up to ``wait_live_s`` for the live
    projection to reach the replayed position before comparing.
    """
    began = time.perf_counter()
    if from_seq < 1:
        raise ConfigError(f"--from {from_seq}: the log starts at sequence 1")
    made = f"replay_{time.strftime('%Y%m%d_%H%M%S')}_{secrets.token_hex(4)}"
    schema = check_schema_name(made if into is None else into)
    check_schema_name(live_schema)
    if schema == live_schema:
        raise StoreError("the replay must build into a schema other than the live one", schema=schema)
    keep = into is not None if keep is None else keep
    last = await bus.last_seq()
    if from_seq > 1 and from_seq > last:
        raise ConfigError(f"--from {from_seq} is past the end of the log (its last sequence is {last})")
    report = ReplayReport(schema=schema, from_seq=from_seq, kept=keep, live_schema=live_schema)
    conn = await connect(dsn, schema)
    try:
        await _create(conn, schema)
    except BaseException:
        with contextlib.suppress(*DB_ERRORS):
            await conn.close()
        raise
    try:  # from here on the schema is ours: dropped on failure unless kept
        await apply_migrations(conn, schema)
        if not keep:
            await _unlogged(conn, schema)
        indexes = await _drop_secondary_indexes(conn, schema)
        target = await bus.last_seq()
        load_embedder()  # the memory's model, once per process: set-up, like the schema, not rebuilding
        started = time.perf_counter()
        report.setup_seconds = started - began
        with _progress_bar(progress, console, max(0, target - from_seq + 1)) as advance:
            stats = await _run_projector(bus, dsn, schema, from_seq, target, batch, name, advance)
            report.events += stats
            report.through_seq = await read_checkpoint(conn, name)
            if compare:
                await _compare(bus, dsn, report, conn, from_seq, target, batch, name, advance, wait_live_s)
        if keep:
            with translate("build the indexes", schema=schema):
                for index_sql in indexes:
                    await conn.execute(index_sql)
        report.seconds = time.perf_counter() - started
        report.digests = await table_digests(conn, min_seq=from_seq)
    except BaseException:
        if not keep:
            await _drop(conn, schema)
        raise
    else:
        if not keep:
            await _drop(conn, schema)
    finally:
        with contextlib.suppress(*DB_ERRORS):
            await conn.close()
    return report


async def _compare(
    bus: Bus,
    dsn: str,
    report: ReplayReport,
    conn: asyncpg.Connection,
    from_seq: int,
    target: int,
    batch: int,
    name: str,
    advance: Callable[[int], None],
    wait_live_s: float,
) -> None:
    deadline = time.monotonic() + wait_live_s
    while True:
        snapshot = await _live_snapshot(dsn, report.live_schema, from_seq, name)
        if snapshot is None:
            report.note = f"there are no live projections in schema {report.live_schema} to compare with"
            return
        position, digests = snapshot
        if position >= report.through_seq:
            break
        if time.monotonic() >= deadline:
            report.note = (
                f"the live projections are at seq {position}, behind the replay (seq {report.through_seq}); "
                "is the runtime projecting? Not compared."
            )
            return
        await asyncio.sleep(0.2)
    if position > report.through_seq:
        report.events += await _run_projector(bus, dsn, report.schema, from_seq, position, batch, name, advance)
        report.through_seq = await read_checkpoint(conn, name)
    if report.through_seq != position:
        report.note = f"the replay reached seq {report.through_seq}, the live projections seq {position}"
        return
    report.live = digests
    report.compared = True


async def _run_projector(
    bus: Bus,
    dsn: str,
    schema: str,
    from_seq: int,
    until: int,
    batch: int,
    name: str,
    advance: Callable[[int], None],
) -> int:
    projector = Projector(
        bus,
        dsn,
        schema=schema,
        name=name,
        follow=False,
        from_seq=from_seq,
        until_seq=until,
        batch=batch,
        on_commit=lambda first, last, count: advance(count),
    )
    stats = await projector.run()
    return stats.events


async def _drop_secondary_indexes(conn: asyncpg.Connection, schema: str) -> list[str]:
    """Drop the indexes that enforce nothing (all but primary keys) for the bulk load; return their DDL.

    Building an index once over the loaded rows is cheaper than maintaining it row by row, the
    HNSW graph of ``memory`` most of all.
    """
    with translate("drop the secondary indexes for the bulk load", schema=schema):
        rows = await conn.fetch(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i "
            "JOIN pg_class c ON c.relname = i.indexname "
            "JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = i.schemaname "
            "JOIN pg_index x ON x.indexrelid = c.oid "
            "WHERE i.schemaname = $1 AND NOT x.indisunique",
            schema,
        )
        for row in rows:
            await conn.execute(f"DROP INDEX {quote_ident(schema)}.{quote_ident(row['indexname'])}")
    return [str(row["indexdef"]) for row in rows]


async def _unlogged(conn: asyncpg.Connection, schema: str) -> None:
    """Make the tables of a schema that is dropped after the comparison UNLOGGED: no WAL to write."""
    with translate("make the replay tables unlogged", schema=schema):
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
        for row in tables:
            await conn.execute(f"ALTER TABLE {quote_ident(schema)}.{quote_ident(row['tablename'])} SET UNLOGGED")


async def _create(conn: asyncpg.Connection, schema: str) -> None:
    """Create the replay's schema, refusing one that exists: a replay only ever drops its own."""
    try:
        with translate("create the replay schema", schema=schema):
            await conn.execute(f"CREATE SCHEMA {quote_ident(schema)}")
    except StoreError as exc:
        if isinstance(exc.__cause__, asyncpg.DuplicateSchemaError):
            raise StoreError("the replay schema already exists; choose another or drop it", schema=schema) from exc
        raise


async def drop_replay(dsn: str, schema: str, *, live_schema: str = "public") -> None:
    """Drop a schema a replay kept (``replay --into``): never the live one, nor a schema that
    holds no projections (one the operator made for something else)."""
    check_schema_name(schema)
    if schema == live_schema:
        raise ConfigError("that is the live projections' schema: it is never dropped", schema=schema)
    async with connection(dsn, live_schema) as conn:
        with translate("look for the schema", schema=schema):
            found = await conn.fetchval(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 "
                "AND table_name = 'projection_checkpoints'",
                schema,
            )
        if not found:
            raise ConfigError("no replay kept this schema (it holds no projections): nothing dropped", schema=schema)
        await _drop(conn, schema)


async def _drop(conn: asyncpg.Connection, schema: str) -> None:
    with translate("drop the replay schema", schema=schema):
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")


@contextlib.contextmanager
def _progress_bar(progress: bool | Callable[[int, int], None], console: Console | None, total: int) -> Any:
    done = 0
    if callable(progress):

        def report(count: int) -> None:
            nonlocal done
            done += count
            progress(done, total)

        yield report
        return
    if not progress:
        yield lambda count: None
        return
    bar = Progress(
        TextColumn("[bold]replaying[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("events"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        transient=False,
    )
    started = time.perf_counter()
    with bar:
        task = bar.add_task("replay", total=total or None, rate="")

        def advance(count: int) -> None:
            nonlocal done
            done += count
            elapsed = time.perf_counter() - started
            rate = f"{done / elapsed:,.0f}/s" if elapsed > 0 else ""
            bar.update(task, completed=done, total=max(total, done) or None, rate=rate)

        yield advance
