"""Shared pytest fixtures for the symbiote test suite.

Keep this file to fixtures that several test modules share; module-specific
fixtures belong in their test module.

Embedded servers (real processes, no mocks — see :mod:`symbiote.bus.server`
and :mod:`symbiote.projections.pgserver`):

``nats_server``  function scope: a fresh nats-server with JetStream, storing in ``tmp_path``.
``nats_url``     function scope: its client URL.
``pg_server``    session scope: one PostgreSQL (+pgvector) for the whole run (initdb is slow).
``pg_dsn``       function scope: DSN of a fresh, uniquely named database on ``pg_server``
                 with the ``vector`` extension; dropped afterwards.

The servers are separate processes and the classes are not bound to an event
loop, so a session-scoped server is usable from function-scoped tests.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from symbiote.bus.server import NatsServer, NatsServerConfig
from symbiote.projections.pgserver import PostgresServer, PostgresServerConfig

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


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PostgresServer]:
    """One PostgreSQL server (with pgvector) for the whole test session."""
    data_dir = tmp_path_factory.mktemp("pg")
    async with PostgresServer(PostgresServerConfig(data_dir=data_dir)) as server:
        yield server


@pytest_asyncio.fixture
async def pg_dsn(pg_server: PostgresServer) -> AsyncIterator[str]:
    """DSN of a fresh database (``vector`` extension created) on ``pg_server``; dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    dsn = await pg_server.create_database(name)
    try:
        yield dsn
    finally:
        await pg_server.drop_database(name)
