"""Replay: every projection rebuilt from the log equals the live one, digest per table."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import typer
from typer.testing import CliRunner

from symbiote.bootstrap import define_command, initialize, revoke_key, set_policy
from symbiote.bus.envelope import Envelope, make_event
from symbiote.bus.ids import now_ms
from symbiote.bus.stream import Bus
from symbiote.cli import history
from symbiote.dispatcher import Dispatcher, Executors
from symbiote.errors import ConfigError, StoreError
from symbiote.home import DataDir
from symbiote.projections import (
    MEMORY_SEARCH_DEFINITION,
    Projections,
    Projector,
    drop_replay,
    memory_search_builtin,
    replay,
    table_digests,
)
from symbiote.projections.db import connect, schema_exists
from symbiote.registry.definition import ApprovalPolicy, load_definition
from symbiote.signers.keys import SigningKey, sign_event
from tests.helpers import eventually

pytestmark = pytest.mark.timeout(120)


class Keys:
    def __init__(self, home: DataDir) -> None:
        self.owner = home.load_key("owner")
        self.user = home.load_key("user")
        self.agent = home.load_key("agent")
        self.runtime = home.load_key("runtime")

    def sign(self, key: SigningKey, kind: str, body: dict[str, Any], **kw: Any) -> Envelope:
        return sign_event(make_event(kind, key.principal, body, **kw), key)

    def text(self, text: str) -> Envelope:
        return self.sign(self.user, "input.text", {"text": text})

    def proposal(self, source: Envelope, command: str, args: dict[str, Any]) -> Envelope:
        body = {"command": command, "args": args, "confidence": 0.8, "expires_at": now_ms() + 600_000}
        return self.sign(self.agent, "command.proposed", body, corr=source.id, cause=source.id)


@pytest_asyncio.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    connection = await Bus.connect(nats_url)
    await connection.ensure_stream()
    try:
        yield connection
    finally:
        await connection.close()


async def live_session(bus: Bus, home: DataDir, dsn: str, tmp_path: Path) -> Projections:
    """A real dispatcher and the live projections, through registry changes mid-log."""
    await initialize(bus, home, name="ann")
    keys = Keys(home)
    await define_command(bus, keys.owner, load_definition(MEMORY_SEARCH_DEFINITION))
    service = Projections(bus, dsn, keys.runtime, home.checkpoints_dir, checkpoint_interval_s=0.5, drain_s=60)
    async with service:
        executors = Executors(tmp_path / "ws", builtins={"memory.search": memory_search_builtin(service.memory)})
        async with Dispatcher(bus, keys.runtime, executors):
            ids = []
            for i in range(40):
                source = keys.text(f"echo item {i} of the shopping list")
                proposal = keys.proposal(source, "echo", {"text": f"item {i}"})
                await bus.publish(source)
                await bus.publish(proposal)
                ids.append(proposal.id)
            # the policy changes mid-log: echo now needs an approval nobody gives
            await set_policy(bus, keys.owner, "echo", ApprovalPolicy(mode="user", quorum=1))
            source = keys.text("echo after the policy changed")
            pending = keys.proposal(source, "echo", {"text": "later"})
            await bus.publish(source)
            await bus.publish(pending)
            source = keys.text("search my memory for the shopping list")
            await bus.publish(source)
            await bus.publish(keys.proposal(source, "memory.search", {"query": "shopping list"}))
            # a key is revoked: its later signatures stop counting
            extra = SigningKey.generate("user:bob")
            from symbiote.bootstrap import register_key

            await register_key(bus, keys.owner, extra.kid, extra.principal)
            await bus.publish(keys.sign(extra, "input.text", {"text": "bob was here"}))
            await revoke_key(bus, keys.owner, extra.kid, extra.principal)
            await bus.publish(keys.sign(extra, "input.text", {"text": "bob after revocation"}))
            await bus.publish_raw("sym.in.text", b"\xc1garbage")
            last = await bus.last_seq()
            assert await service.wait_for(last, 30)

            async def all_ended() -> bool:
                conn = await connect(dsn)
                try:
                    done = await conn.fetchval(
                        "SELECT count(*) FROM commands WHERE state IN ('succeeded', 'failed', 'denied')"
                    )
                finally:
                    await conn.close()
                return bool(done >= 41)

            await eventually(all_ended, timeout=60)
            await asyncio.sleep(0.2)  # anything the dispatcher still writes
            assert await service.wait_for(await bus.last_seq(), 30)
    return service


async def test_replay_equals_live(bus: Bus, pg_dsn: str, tmp_path: Path) -> None:
    home = DataDir(tmp_path / "home")
    await live_session(bus, home, pg_dsn, tmp_path)
    lines: list[tuple[int, int]] = []
    report = await replay(bus, pg_dsn, into="rebuilt", progress=lambda done, total: lines.append((done, total)))
    assert report.compared, report.note
    assert report.ok, report.mismatches
    assert report.kept and report.through_seq == await bus.last_seq()
    assert lines and lines[-1][0] == report.events
    conn = await connect(pg_dsn)
    try:
        assert await schema_exists(conn, "rebuilt")
        live = await table_digests(conn)
        states = dict(await conn.fetch("SELECT state, count(*) FROM commands GROUP BY state"))
        signers = await conn.fetch("SELECT signers, problem FROM events WHERE body->>'text' LIKE 'bob%' ORDER BY seq")
        index_query = (
            "SELECT indexname, replace(indexdef, schemaname || '.', '') FROM pg_indexes "
            "WHERE schemaname = $1 ORDER BY indexname"
        )
        live_indexes = await conn.fetch(index_query, "public")
        kept_indexes = await conn.fetch(index_query, "rebuilt")
        unlogged = await conn.fetchval(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'rebuilt' AND c.relpersistence = 'u'"
        )
    finally:
        await conn.close()
    # a kept schema is a full copy: every index (the HNSW graph too), durable tables
    assert [tuple(r) for r in kept_indexes] == [tuple(r) for r in live_indexes]
    assert any("hnsw" in r[1] for r in kept_indexes)
    assert unlogged == 0
    assert live == report.digests
    assert states["succeeded"] == 41 and states["awaiting_approval"] == 1
    assert [r["signers"] for r in signers] == [["user:bob"], []]
    assert signers[1]["problem"].startswith("revoked_key")

    partial = await replay(bus, pg_dsn, from_seq=30)
    assert partial.ok, (partial.mismatches, partial.note)
    assert partial.digests["events"].rows == report.through_seq - 29
    conn = await connect(pg_dsn)
    try:
        touched = await conn.fetchval("SELECT count(*) FROM commands WHERE last_seq >= 30")
    finally:
        await conn.close()
    assert partial.digests["commands"].rows == touched > 0
    assert partial.digests["keys"] == live["keys"]  # the registry is always folded from the head
    conn = await connect(pg_dsn)
    try:
        assert not await schema_exists(conn, partial.schema)  # a temporary schema is dropped
    finally:
        await conn.close()


async def test_replay_reports_a_live_table_that_differs(bus: Bus, pg_dsn: str, tmp_path: Path) -> None:
    home = DataDir(tmp_path / "home")
    await initialize(bus, home, name="ann")
    keys = Keys(home)
    source = keys.text("echo x")
    await bus.publish(source)
    await bus.publish(keys.proposal(source, "echo", {"text": "x"}))
    await Projector(bus, pg_dsn, follow=False).run()
    conn = await connect(pg_dsn)
    try:
        await conn.execute("UPDATE commands SET state = 'succeeded'")
        await conn.execute("DELETE FROM memory")
    finally:
        await conn.close()
    report = await replay(bus, pg_dsn)
    assert report.compared and not report.ok
    assert report.mismatches == ["commands", "memory"]


async def test_replay_without_live_projections_is_not_compared(bus: Bus, pg_dsn: str, tmp_path: Path) -> None:
    await initialize(bus, DataDir(tmp_path / "home"), name="ann")
    report = await replay(bus, pg_dsn, wait_live_s=0.5)
    assert not report.compared and not report.ok
    assert "no live projections" in report.note
    assert report.digests["keys"].rows == 4


async def test_replay_never_drops_a_schema_it_did_not_make(bus: Bus, pg_dsn: str, tmp_path: Path) -> None:
    await initialize(bus, DataDir(tmp_path / "home"), name="ann")
    conn = await connect(pg_dsn)
    try:
        await conn.execute("CREATE SCHEMA precious; CREATE TABLE precious.data (x int)")
        with pytest.raises(StoreError, match="already exists"):
            await replay(bus, pg_dsn, into="precious", keep=False, compare=False)
        with pytest.raises(ConfigError):  # a name that only looks like another (trailing newline)
            await replay(bus, pg_dsn, into="public\n", compare=False)
        with pytest.raises(ConfigError, match="past the end of the log"):
            await replay(bus, pg_dsn, from_seq=await bus.last_seq() + 1)
        with pytest.raises(ConfigError, match="the log starts at sequence 1"):
            await replay(bus, pg_dsn, from_seq=-5)
        with pytest.raises(ConfigError, match="schema names are"):  # not a made-up name, kept
            await replay(bus, pg_dsn, into="", compare=False)
        with pytest.raises(ConfigError, match="no replay kept this schema"):
            await drop_replay(pg_dsn, "precious")
        with pytest.raises(ConfigError, match="never dropped"):
            await drop_replay(pg_dsn, "public")
        assert await schema_exists(conn, "precious")
        assert await conn.fetchval("SELECT count(*) FROM precious.data") == 0
    finally:
        await conn.close()


def test_cli_replay(nats_url: str, pg_dsn: str, tmp_path: Path) -> None:
    home = DataDir(tmp_path / "home")

    async def prepare() -> int:
        async with await Bus.connect(nats_url) as bus:
            await bus.ensure_stream()
            await initialize(bus, home, name="ann")
            await Projector(bus, pg_dsn, follow=False).run()
            return await bus.last_seq()

    last = asyncio.run(prepare())
    app = typer.Typer()
    history.register(app)
    args = ["replay", "--data-dir", str(home.root), "--nats-url", nats_url, "--postgres-dsn", pg_dsn]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] is True and data["through_seq"] == last and data["mismatches"] == []
    result = CliRunner().invoke(app, [*args, "--into", "kept_copy", "--from", "2"])
    assert result.exit_code == 0, result.output
    assert "the replay equals the live projections" in result.output
    result = CliRunner().invoke(app, [*args, "--into", "kept_copy"])
    assert result.exit_code == 1 and "already exists" in result.output
    result = CliRunner().invoke(app, [*args, "--drop", "kept_copy"])
    assert result.exit_code == 0 and "dropped schema kept_copy" in result.output, result.output
    result = CliRunner().invoke(app, [*args, "--into", "kept_copy", "--json"])  # the name is free again
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["replay", "--data-dir", str(home.root), "--nats-url", nats_url])
    assert result.exit_code == 1 and "PostgreSQL is not known: the runtime is not up" in result.output
    home.write_runtime({"nats_url": nats_url, "postgres_dsn": None, "api_url": None, "pid": os.getpid()})
    result = CliRunner().invoke(app, ["replay", "--data-dir", str(home.root), "--nats-url", nats_url])
    assert result.exit_code == 1 and "the running runtime has none (started with --no-postgres)" in result.output
