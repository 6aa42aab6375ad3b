"""PostgreSQL plumbing of the projections: connections, the ``vector`` codec, versioned migrations.

Every asyncpg call of :mod:`symbiote.projections` goes through :func:`translate` (or the
helpers here), so callers only ever see :class:`~symbiote.errors.StoreError`.

Migrations are the files ``migrations/NNN_name.sql`` of this package, applied in version
order into a target schema (``CREATE SCHEMA IF NOT EXISTS``; the files name their tables
unqualified and run with ``search_path = <schema>, public``). Applied versions are kept in
``<schema>.schema_migrations`` with a checksum, so an edited migration is refused rather
than silently skipped. Concurrent migrators serialise on an advisory lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg
import numpy as np

from symbiote.errors import ConfigError, StoreError

__all__ = [
    "DB_ERRORS",
    "Migration",
    "apply_migrations",
    "connect",
    "create_pool",
    "decode_vector",
    "encode_vector",
    "load_migrations",
    "quote_ident",
    "translate",
]

DB_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)
_MIGRATION_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@contextlib.contextmanager
def translate(what: str, **fields: Any) -> Iterator[None]:
    """Turn driver errors raised inside the block into :class:`StoreError` (``what`` failed)."""
    try:
        yield
    except DB_ERRORS as exc:
        raise StoreError(f"PostgreSQL: {what} failed", error=f"{type(exc).__name__}: {exc}"[:500], **fields) from exc


def quote_ident(name: str) -> str:
    """A double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def check_schema_name(schema: str) -> str:
    """``schema`` if it is a plain lower-case identifier; raise :class:`ConfigError` otherwise."""
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigError("schema names are lower-case letters, digits and _", schema=schema)
    return schema


def encode_vector(value: Any) -> bytes:
    """pgvector's binary form: int16 dim, int16 unused, then dim big-endian float4."""
    array = np.asarray(value, dtype=">f4").reshape(-1)
    return struct.pack(">HH", array.shape[0], 0) + array.tobytes()


def decode_vector(data: bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The inverse of :func:`encode_vector`."""
    dim, _ = struct.unpack_from(">HH", data)
    return np.frombuffer(data, dtype=">f4", count=dim, offset=4).astype(np.float32)


async def _init_connection(conn: asyncpg.Connection) -> None:
    vector_schema = await conn.fetchval(
        "SELECT n.nspname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.typname = 'vector'"
    )
    if vector_schema is not None:
        await conn.set_type_codec(
            "vector", schema=vector_schema, encoder=encode_vector, decoder=decode_vector, format="binary"
        )


async def connect(dsn: str, schema: str = "public", *, durable_commits: bool = True) -> asyncpg.Connection:
    """One connection with ``search_path = <schema>, public`` and the vector codec.

    ``durable_commits=False`` sets ``synchronous_commit = off``: a commit returns before its
    WAL reaches the disk. A PostgreSQL crash may then lose the last fraction of a second of
    commits — whole transactions, never part of one — which suits projections: each batch's
    rows and checkpoint commit together, so after such a crash the projector simply resumes
    from the older checkpoint and folds those events again, exactly once.
    """
    check_schema_name(schema)
    settings = {"search_path": f"{quote_ident(schema)}, public"}
    if not durable_commits:
        settings["synchronous_commit"] = "off"
    with translate("connect", schema=schema):
        conn = await asyncpg.connect(dsn, timeout=10, server_settings=settings)
        try:
            await _ensure_vector(conn)
            await _init_connection(conn)
        except BaseException:
            await conn.close()
            raise
        return conn


async def create_pool(dsn: str, schema: str = "public", *, max_size: int = 4) -> asyncpg.Pool:
    """A small pool with the same settings as :func:`connect`."""
    check_schema_name(schema)
    with translate("create pool", schema=schema):
        pool = await asyncpg.create_pool(
            dsn,
            min_size=0,
            max_size=max_size,
            timeout=10,
            init=_init_connection,
            server_settings={"search_path": f"{quote_ident(schema)}, public"},
        )
        assert pool is not None
        return pool


async def _ensure_vector(conn: asyncpg.Connection) -> None:
    exists = await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
    if not exists:
        with contextlib.suppress(asyncpg.UniqueViolationError, asyncpg.DuplicateObjectError):
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


@dataclass(frozen=True)
class Migration:
    """One versioned SQL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """The package's migrations in version order; raise :class:`ConfigError` on a bad name or duplicate."""
    folder = resources.files("symbiote.projections") / "migrations"
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _MIGRATION_NAME.match(entry.name)
        if match is None:
            raise ConfigError("migration files are named NNN_name.sql", file=entry.name)
        version = int(match.group(1))
        if version in found:
            raise ConfigError("two migrations share a version", version=version)
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


async def apply_migrations(conn: asyncpg.Connection, schema: str = "public") -> list[int]:
    """Create ``schema`` if needed and apply the migrations it lacks; return the versions applied."""
    check_schema_name(schema)
    applied_now: list[int] = []
    q = quote_ident(schema)
    with translate("migrate", schema=schema):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('symbiote.migrate.' || $1))", schema)
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {q}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {q}.schema_migrations "
                "(version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL)"
            )
            rows = await conn.fetch(f"SELECT version, name, checksum FROM {q}.schema_migrations")  # noqa: S608 - quoted, validated
            done = {r["version"]: r for r in rows}
            for migration in load_migrations():
                row = done.get(migration.version)
                if row is not None:
                    if row["checksum"] != migration.checksum:
                        raise StoreError(
                            "an applied migration was changed afterwards",
                            schema=schema,
                            version=migration.version,
                            name=migration.name,
                        )
                    continue
                await conn.execute(f"SET LOCAL search_path TO {q}, public")
                await conn.execute(migration.sql)
                await conn.execute(
                    f"INSERT INTO {q}.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",  # noqa: S608
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
                applied_now.append(migration.version)
    return applied_now


async def schema_exists(conn: asyncpg.Connection, schema: str) -> bool:
    """Whether ``schema`` exists in the database."""
    with translate("look up schema", schema=schema):
        return bool(await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema))


@contextlib.asynccontextmanager
async def connection(dsn: str, schema: str = "public") -> AsyncIterator[asyncpg.Connection]:
    """``async with connection(dsn, schema) as conn``: a connection closed afterwards."""
    conn = await connect(dsn, schema)
    try:
        yield conn
    finally:
        with contextlib.suppress(*DB_ERRORS):
            await conn.close()
