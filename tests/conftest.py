"""Shared pytest fixtures for the symbiote test suite.

Keep this file to fixtures that several test modules share; module-specific
fixtures belong in their test module.

Embedded servers (real processes, no mocks — see :mod:`symbiote.bus.server`
and :mod:`symbiote.projections.pgserver`):

``nats_server``  function scope: a fresh nats-server with JetStream, storing in ``tmp_path``.
``nats_url``     function scope: its client URL.
``pg_data_dir``  function scope: a fresh path for a ``PostgresServer`` data dir (see below).
``pg_server``    session scope: one PostgreSQL (+pgvector) for the whole run (initdb is slow).
``pg_dsn``       function scope: DSN of a fresh, uniquely named database on ``pg_server``
                 with the ``vector`` extension; dropped afterwards.

The servers are separate processes and the classes are not bound to an event
loop, so a session-scoped server is usable from function-scoped tests.

PostgreSQL data dirs live directly under the system temp dir, not under
``tmp_path``: as root, PostgreSQL runs as an unprivileged user that must be
able to traverse the path, and pytest's base temp dir is private (0700) and is
re-privatised by every pytest session started on the machine.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from symbiote.bus.server import NatsServer, NatsServerConfig
from symbiote.dispatcher import Dispatcher, Executors
from symbiote.projections.pgserver import PostgresServer, PostgresServerConfig
from tests.helpers import World, make_world

# --------------------------------------------------------------------------
# Embedded servers
# --------------------------------------------------------------------------


@pytest_asyncio.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A started nats-server with JetStream in ``tmp_path / "nats"``; stopped afterwards."""
    async with NatsServer(NatsServerConfig(store_dir=tmp_path / "nats")) as server:
        yield server


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """Client URL of the function's ``nats_server``."""
    return nats_server.url


def _pg_temp_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="symbiote-test-pg-"))


@pytest.fixture
def pg_data_dir() -> Iterator[Path]:
    """A not-yet-existing data dir path for a test's own ``PostgresServer``; removed afterwards."""
    root = _pg_temp_root()
    try:
        yield root / "pg"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_server() -> AsyncIterator[PostgresServer]:
    """One PostgreSQL server (with pgvector) for the whole test session."""
    root = _pg_temp_root()
    try:
        async with PostgresServer(PostgresServerConfig(data_dir=root / "pg")) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest_asyncio.fixture
async def pg_dsn(pg_server: PostgresServer) -> AsyncIterator[str]:
    """DSN of a fresh database (``vector`` extension created) on ``pg_server``; dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    dsn = await pg_server.create_database(name)
    try:
        yield dsn
    finally:
        await pg_server.drop_database(name)


# --------------------------------------------------------------------------
# An initialized runtime on the function's nats-server
# --------------------------------------------------------------------------


@pytest_asyncio.fixture
async def world(nats_url: str, tmp_path: Path) -> AsyncIterator[World]:
    """A bus on ``nats_server`` and a data dir whose keys and default commands are registered."""
    w = await make_world(nats_url, tmp_path / "home")
    try:
        yield w
    finally:
        await w.bus.close()


@pytest_asyncio.fixture
async def dispatcher(world: World, tmp_path: Path) -> AsyncIterator[Dispatcher]:
    """A running dispatcher (fast approval expiry checks) with workspaces in ``tmp_path``."""
    async with Dispatcher(world.bus, world.runtime, Executors(tmp_path / "ws"), expiry_interval_s=0.1) as d:
        yield d
