"""Projector, migrations, memory: against a real nats-server and a real PostgreSQL with pgvector."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import msgpack
import pytest
import pytest_asyncio

from symbiote.bootstrap import define_command
from symbiote.bus.envelope import Envelope, from_wire, make_event
from symbiote.bus.ids import new_event_id, now_ms
from symbiote.bus.stream import Bus
from symbiote.dispatcher import Dispatcher, Executors
from symbiote.errors import StoreError
from symbiote.projections import (
    MEMORY_SEARCH_DEFINITION,
    MemoryStore,
    Projections,
    Projector,
    apply_migrations,
    memory_search_builtin,
    replay,
    table_digests,
)
from symbiote.projections.db import connect, load_migrations
from symbiote.projections.fold import TIMELINE_EDGE, Folder, command_id_of
from symbiote.projections.verify import WorkerPool, decode, reading, verdict_at
from symbiote.registry.definition import load_definition
from symbiote.registry.policy import fold_command
from symbiote.signers.keyring import Keyring
from symbiote.signers.keys import SigningKey, sign_event
from tests.helpers import Actors, actors_on, publish_raw_subject

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent
RNG = random.Random(20261123)  # noqa: S311 - test data, not cryptography


# -- helpers -----------------------------------------------------------------------------------
@pytest_asyncio.fixture
async def actors(nats_url: str, tmp_path: Path) -> AsyncIterator[Actors]:
    async with actors_on(nats_url, tmp_path / "home", Actors) as found:
        yield found


def burst(a: Actors, n: int, stranger: SigningKey) -> list[Envelope | bytes]:
    """About ``n`` signed events of every kind (and a few unreadable messages), in publishing order."""
    out: list[Envelope | bytes] = []
    i = 0
    while len(out) < n:
        i += 1
        source = a.text(f"request number {i}: please echo the word {RNG.choice(['red', 'green', 'blue'])}")
        out.append(source)
        if i % 23 == 0:
            out.append(b"\x93not an envelope")
            out.append(a.text("a message from a stranger", stranger))
        if i % 5 == 0:
            proposal = a.proposal(source, "shell.run", {"argv": ["echo", str(i)]})
            digest = proposal.digest()
            needs = {"command_id": proposal.id, "digest": digest, "needs": 1, "principals": [a.user.principal]}
            out += [
                proposal,
                a.runtime_event("command.approval_requested", proposal, **needs, expires_at=now_ms() + 60_000),
                a.approval(proposal, a.agent),  # wrong role: does not count
                a.approval(proposal),
                a.approval(proposal),  # a second approval by the same user
                a.runtime_event("command.started", proposal, sandbox={"backend": "bwrap"}),
                a.runtime_event(
                    "command.failed", proposal, exit_code=1, output={"stderr": f"no {i}"}, duration_ms=i % 97
                ),
            ]
        elif i % 7 == 0:
            proposal = a.proposal(source, "echo", {"text": 17})  # invalid args
            out += [
                proposal,
                a.runtime_event("command.denied", proposal, reason="invalid_args", detail="text: 17 is not a string"),
            ]
        else:
            proposal = a.proposal(source, "echo", {"text": f"word {i}"})
            out += [
                proposal,
                a.runtime_event("command.started", proposal, sandbox={"backend": "inprocess"}),
                a.runtime_event(
                    "command.succeeded", proposal, exit_code=0, output={"text": f"word {i}"}, duration_ms=0
                ),
            ]
    return out


async def publish_all(bus: Bus, items: list[Envelope | bytes], *, chunk: int = 100, pause: float = 0.0) -> int:
    """Publish in order, pausing between chunks; return the last sequence."""
    last = 0
    for start in range(0, len(items), chunk):
        acks = []
        for item in items[start : start + chunk]:
            if isinstance(item, bytes):
                acks.append(await bus.publish_raw("sym.in.text", item))
            else:
                acks.append(await bus.publish(item))
        last = max(last, *(ack.seq for ack in acks))
        if pause:
            await asyncio.sleep(pause)
    return last


async def fetch(dsn: str, query: str, *args: Any, schema: str = "public") -> list[asyncpg.Record]:
    conn = await connect(dsn, schema)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


# -- migrations --------------------------------------------------------------------------------
async def test_migrations_are_versioned_idempotent_and_schema_targeted(pg_dsn: str) -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == sorted(m.version for m in migrations)
    conn = await connect(pg_dsn, "public")
    try:
        assert await apply_migrations(conn, "public") == [m.version for m in migrations]
        assert await apply_migrations(conn, "public") == []
        assert await apply_migrations(conn, "other_schema") == [m.version for m in migrations]
        tables = {
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'other_schema'"
            )
        }
        assert {"events", "commands", "approvals", "keys", "registry", "memory", "projection_checkpoints"} <= tables
        index = await conn.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND indexname = 'memory_embedding_hnsw'"
        )
        assert "hnsw" in index and "vector_cosine_ops" in index
        await conn.execute("UPDATE other_schema.schema_migrations SET checksum = 'edited'")
        with pytest.raises(StoreError, match="changed afterwards"):
            await apply_migrations(conn, "other_schema")
    finally:
        await conn.close()


# -- verification --------------------------------------------------------------------------------
async def test_verdict_at_equals_keyring_verify(actors: Actors) -> None:
    a = actors
    stranger = SigningKey.generate("user:eve")
    good = a.text("hello")
    forged = good.model_copy(update={"sigs": ()}).with_sig(a.user.kid, bytes(64))
    cases = [
        good,
        a.text("who am I", stranger),  # unknown key
        forged,  # bad signature
        sign_event(make_event("input.text", "user:bob", {"text": "x"}), a.user),  # actor not among signers
        make_event("input.text", a.user.principal, {"text": "unsigned"}),
        sign_event(sign_event(make_event("input.text", a.user.principal, {"text": "two"}), a.user), stranger),
    ]
    seq = await a.send(a.text("anything"))
    folder = Folder(a.bus)
    await folder.prime(seq)
    messages = [_stored(seq + 1 + i, event) for i, event in enumerate(cases)]
    pool = WorkerPool(workers=2, chunk=1, inline=0)  # every message examined in a worker process
    try:
        examined = await pool.decode(messages)
    finally:
        pool.close()
    assert [d.sig_ok for d in examined] == [decode(m).sig_ok for m in messages]
    assert examined[2].sig_ok == [False] and examined[4].sig_ok == []  # forged, unsigned
    for item, event in zip(examined, cases, strict=True):
        assert item.event == event and item.body_problem is None
        for position in (1, 3, seq + 1):
            # the plain registry rules with the crypto computed here (no cache involved)
            expected = Keyring.verify(Keyring(folder.state.keyring.keys), event, position)
            assert verdict_at(folder.state.keyring, event, position, item.sig_ok) == expected


async def test_a_folder_with_a_tiny_cache_folds_the_same_rows(actors: Actors) -> None:
    """Commands evicted from the folder's cache are read back from the stream when they go on."""
    a = actors
    stranger = SigningKey.generate("user:eve")
    first, second = burst(a, 150, stranger), burst(a, 150, stranger)
    # two bursts interleaved: commands go on after others came in between
    mixed = [item for pair in zip(first, second, strict=False) for item in pair]
    await publish_all(a.bus, mixed + first[len(mixed) // 2 :] + second[len(mixed) // 2 :])
    async with reading(a.bus) as messages:
        msgs = [m async for m in messages]
    roomy, tiny = Folder(a.bus), Folder(a.bus, cache_size=1)
    reloads = 0
    for start in range(0, len(msgs), 3):  # small batches: a command's events span several
        batch = [decode(m) for m in msgs[start : start + 3]]
        evicted = set(tiny._tracks.evicted)
        folded = []
        for folder in (roomy, tiny):
            await folder.prepare(batch)
            folded.append(folder.fold(batch))
        reloads += len({command_id_of(d.subject) for d in batch} & evicted)
        assert folded[0] == folded[1], f"rows differ in the batch from seq {batch[0].seq}"
    assert reloads > 10, "the test never read an evicted command back"
    assert len(tiny._tracks) <= 1


def _stored(seq: int, event: Envelope) -> Any:
    from symbiote.bus.stream import StoredMsg

    return StoredMsg(seq, "sym.in.text", event.to_wire())


# -- the projector -----------------------------------------------------------------------------
async def test_projector_folds_a_real_dispatcher_session(actors: Actors, pg_dsn: str, tmp_path: Path) -> None:
    a = actors
    await define_command(a.bus, a.owner, load_definition(MEMORY_SEARCH_DEFINITION))
    store = MemoryStore(pg_dsn)
    executors = Executors(tmp_path / "ws", builtins={"memory.search": memory_search_builtin(store)})
    projector = Projector(a.bus, pg_dsn)
    try:
        async with projector, Dispatcher(a.bus, a.runtime, executors):
            echo_in = a.text("echo the garden needs water")
            echo = a.proposal(echo_in, "echo", {"text": "the garden needs water"})
            shell_in = a.text("run ls")
            shell = a.proposal(shell_in, "shell.run", {"argv": ["ls"]})
            bad_in = a.text("echo 17")
            bad = a.proposal(bad_in, "echo", {"text": 17})
            for event in (echo_in, echo, shell_in, shell, bad_in, bad):
                await a.send(event)
            await _wait_state(pg_dsn, echo.id, "succeeded")
            await _wait_state(pg_dsn, bad.id, "denied")
            await _wait_state(pg_dsn, shell.id, "awaiting_approval")
            await a.send(a.approval(shell, a.agent))  # wrong role
            await a.send(a.approval(shell))
            await _wait_state(pg_dsn, shell.id, "succeeded", "failed")
            late = await a.send(a.approval(shell))  # after the command was decided
            recall_in = a.text("search my memory for the garden")
            recall = a.proposal(recall_in, "memory.search", {"query": "search my memory for the garden"})
            await a.send(recall_in)
            await a.send(recall)
            await _wait_state(pg_dsn, recall.id, "succeeded")
            last = await a.bus.last_seq()
            assert await projector.wait_for(last, 10)
    finally:
        await store.close()

    rows = {r["command_id"]: r for r in await fetch(pg_dsn, "SELECT * FROM commands")}
    assert rows[echo.id]["state"] == "succeeded"
    assert rows[echo.id]["command"] == "echo" and rows[echo.id]["agent"] == "agent:main"
    assert json.loads(rows[echo.id]["args"]) == {"text": "the garden needs water"}
    assert rows[echo.id]["input_id"] == echo_in.id and rows[echo.id]["exit_code"] == 0
    assert [t["type"] for t in json.loads(rows[echo.id]["timeline"])] == [
        "command.proposed",
        "command.started",
        "command.succeeded",
    ]
    assert rows[bad.id]["state"] == "denied" and rows[bad.id]["denial_reason"] == "invalid_args"
    assert rows[shell.id]["approval_mode"] == "user" and rows[shell.id]["quorum"] == 1
    assert [x["principal"] for x in json.loads(rows[shell.id]["approvals"])] == ["user:ann"]
    output = json.loads(rows[recall.id]["output"])
    assert "the garden needs water" in output["hits"][0]["text"]

    approvals = await fetch(pg_dsn, "SELECT * FROM approvals WHERE command_id = $1 ORDER BY seq", shell.id)
    assert [(r["principal"], r["counted"], r["reason"]) for r in approvals] == [
        ("agent:main", False, "wrong_role"),
        ("user:ann", True, None),
        ("user:ann", False, "decided"),
    ]
    assert approvals[-1]["seq"] == late

    events = await fetch(pg_dsn, "SELECT seq, type, signers, problem FROM events ORDER BY seq")
    assert [r["seq"] for r in events] == list(range(1, last + 1))
    assert all(r["problem"] is None and r["signers"] for r in events)
    keys = await fetch(pg_dsn, "SELECT principal, role FROM keys ORDER BY registered_seq")
    assert [k["role"] for k in keys] == ["owner", "agent", "runtime", "user"]
    registry = {r["name"]: r for r in await fetch(pg_dsn, "SELECT * FROM registry")}
    assert set(registry) == {"echo", "note.write", "shell.run", "memory.search"}
    assert registry["shell.run"]["approval_mode"] == "user"
    memory = await fetch(pg_dsn, "SELECT kind, text FROM memory ORDER BY seq")
    kinds = {(m["kind"], m["text"]) for m in memory}
    assert ("input", "echo the garden needs water") in kinds
    assert any(k == "outcome" and t.startswith("echo ") for k, t in kinds)
    assert not any("memory.search" in t for k, t in kinds if k == "outcome")  # its outcomes are not remembered

    # the projected approvals are those fold_command counts over the same events
    folder = Folder(a.bus)
    await folder.prime(last)
    history = [(m.seq, from_wire(m.data)) for m in await a.bus.history(f"sym.cmd.{shell.id}.>")]
    life = fold_command(shell.id, history, folder.state)
    assert life.approvals == {"user:ann": approvals[1]["seq"]}


async def _wait_state(dsn: str, command_id: str, *states: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            rows = await fetch(dsn, "SELECT state FROM commands WHERE command_id = $1", command_id)
        except asyncpg.UndefinedTableError:
            rows = []  # not migrated yet
        if rows and rows[0]["state"] in states:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{command_id} is {rows[0]['state'] if rows else 'absent'}, not {states}")
        await asyncio.sleep(0.05)


async def test_projector_resumes_from_its_checkpoint(actors: Actors, pg_dsn: str) -> None:
    a = actors
    stranger = SigningKey.generate("user:eve")
    items = burst(a, 400, stranger)
    last = await publish_all(a.bus, items[:200])
    first = Projector(a.bus, pg_dsn, follow=False, batch=64)
    assert (await first.run()).last_seq == last
    last = await publish_all(a.bus, items[200:])
    second = Projector(a.bus, pg_dsn, follow=False, batch=64)
    stats = await second.run()
    assert stats.last_seq == last and stats.events == last - first.stats.last_seq
    report = await replay(a.bus, pg_dsn)
    assert report.ok, (report.mismatches, report.note)
    problems = await fetch(pg_dsn, "SELECT problem FROM events WHERE problem IS NOT NULL")
    assert any(p["problem"].startswith("undecodable") for p in problems)
    assert any(p["problem"].startswith("unknown_key") for p in problems)


async def test_hostile_messages_neither_stop_nor_skew_the_projection(actors: Actors, pg_dsn: str) -> None:
    """What anyone connected to NATS (or a key holder with odd data) can put in the log: the
    projector takes it, restarts from its checkpoint through it, and a replay equals it."""
    a = actors
    source = a.text("list the files")
    proposal = a.proposal(source, "shell.run", {"argv": ["ls"]})
    request = {"digest": proposal.digest(), "needs": 1, "principals": [a.user.principal]}
    stranger = SigningKey.generate("user:eve")
    items: list[Envelope | bytes] = [
        a.sign(a.user, "input.text", {"text": "from the far future"}, at=2**64 - 1),
        source,
        proposal,
        a.runtime_event("command.approval_requested", proposal, **request, expires_at=now_ms() + 60_000),
        *(a.approval(proposal, stranger) for _ in range(300)),  # forged: each folds in constant time
    ]
    deep: Any = "bottom"
    for _ in range(70):
        deep = {"deeper": deep}
    envelope = {  # canonical but for its depth (no one can sign it: signing refuses it too)
        "actor": a.user.principal, "at": now_ms(), "body": {"extra": deep, "text": "deep"}, "cause": None,
        "corr": None, "id": new_event_id(), "sigs": [{"kid": a.user.kid, "sig": bytes(64)}], "type": "input.text",
        "v": 1,
    }  # fmt: skip
    items.append(msgpack.packb(envelope, use_bin_type=True))
    await publish_all(a.bus, items)
    odd_subjects = ["sym.cmd.*.started", "sym.cmd." + "\u732b" * 1250 + ".started", "sym.cmd.not-an-id.started"]
    for subject in odd_subjects:
        await a.bus.publish_raw(subject, b"\x93unsigned")
    # a subject that is not UTF-8 (nats-py decoded every subject strictly: no reader got past it)
    await publish_raw_subject(a.bus, b"sym.in.\xff\xfe", a.text("not utf-8 where it was put").to_wire())
    nul = SigningKey.generate("user:bob")
    body = {"kid": nul.kid, "principal": "user:bob\x00", "role": "user"}
    last = await a.send(a.sign(a.owner, "key.registered", body))
    first = Projector(a.bus, pg_dsn, follow=False)
    assert (await first.run()).last_seq == last
    more = [a.approval(proposal), a.runtime_event("command.started", proposal, sandbox={"backend": "bwrap"})]
    last = await publish_all(a.bus, more)
    for subject in odd_subjects:  # again, after the restart (its history lookups take the other path)
        await a.bus.publish_raw(subject, b"\x93unsigned")
    last = await a.bus.last_seq()
    second = Projector(a.bus, pg_dsn, follow=False)
    assert (await second.run()).last_seq == last
    report = await replay(a.bus, pg_dsn)
    assert report.ok, (report.mismatches, report.note)
    rows = await fetch(pg_dsn, "SELECT command_id, state, timeline FROM commands")
    assert [(r["command_id"], r["state"]) for r in rows] == [(proposal.id, "started")]
    timeline = json.loads(rows[0]["timeline"])  # the 300 forged approvals do not all go in every write
    assert len(timeline) == 2 * TIMELINE_EDGE + 1 and timeline[-1]["type"] == "command.started"
    assert [e["type"] for e in timeline].count("omitted") == 1
    stray = await fetch(
        pg_dsn, "SELECT count(*) AS n FROM events WHERE subject LIKE 'sym.cmd.%' AND command_id IS NULL"
    )
    assert stray[0]["n"] == 2 * len(odd_subjects)
    far = await fetch(pg_dsn, "SELECT at FROM memory WHERE text = 'from the far future'")
    assert [r["at"] for r in far] == [0]
    deep_rows = await fetch(pg_dsn, "SELECT problem FROM events WHERE problem LIKE '%nest too deep%'")
    assert len(deep_rows) == 1 and deep_rows[0]["problem"].startswith("undecodable")
    odd = await fetch(pg_dsn, "SELECT subject FROM events WHERE strpos(subject, chr(92)) > 0")
    assert [r["subject"] for r in odd] == ["sym.in.\\xff\\xfe (not UTF-8)"]
    keys = await fetch(pg_dsn, "SELECT principal FROM keys WHERE kid = $1", nul.kid)
    assert [r["principal"] for r in keys] == ["user:bob\ufffd"]


async def test_an_event_the_fold_cannot_take_stops_neither_the_service_nor_its_checkpoints(
    actors: Actors, pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the fold (simulated for one event) is logged and retried; the checkpointer goes on,
    and the service still stops cleanly."""
    a = actors
    poison = await a.send(a.text("the fold breaks on this one"))
    fold_one = Folder._fold_one

    def breaking(self: Folder, item: Any, rows: Any, touched: Any) -> None:
        if item.seq == poison:
            raise RuntimeError(f"cannot fold seq {item.seq}")
        fold_one(self, item, rows, touched)

    monkeypatch.setattr(Folder, "_fold_one", breaking)
    service = Projections(
        a.bus, pg_dsn, a.runtime, tmp_path / "checkpoints", checkpoint_interval_s=0.2, checkpoint_idle_s=0.2,
        restart_backoff_s=0.05, drain_s=2.0,
    )  # fmt: skip
    async with service:
        deadline = asyncio.get_running_loop().time() + 20
        while service.failures < 2 or service.checkpointer.last is None:
            assert asyncio.get_running_loop().time() < deadline, (service.failures, service.checkpointer.last)
            await asyncio.sleep(0.05)
        assert service.position < poison
    assert service.checkpointer.last is not None and service.checkpointer.last.last_seq >= poison


async def test_batches_that_pile_up_are_written_together(actors: Actors, pg_dsn: str) -> None:
    """Tiny batches fold faster than they commit: the writer takes all that waited in one
    transaction, and the tables are still exactly a replay's."""
    a = actors
    items = burst(a, 300, SigningKey.generate("user:eve"))
    last = await publish_all(a.bus, items)
    commits: list[tuple[int, int, int]] = []
    projector = Projector(
        a.bus, pg_dsn, follow=False, batch=3, on_commit=lambda first, end, count: commits.append((first, end, count))
    )
    stats = await projector.run()
    assert stats.last_seq == last and stats.events == last
    assert any(count > 3 for _, _, count in commits), "no batches were written together"
    assert [c[0] for c in commits[1:]] == [c[1] + 1 for c in commits[:-1]], "contiguous, in order"
    assert sum(c[2] for c in commits) == last
    report = await replay(a.bus, pg_dsn)
    assert report.ok, (report.mismatches, report.note)
    memory = await fetch(pg_dsn, "SELECT count(*) AS n, count(embedding) AS e FROM memory")
    assert memory[0]["n"] == memory[0]["e"] > 0


# -- crash safety --------------------------------------------------------------------------------
PROJECTOR_SCRIPT = """
import asyncio, sys
from symbiote.bus.stream import Bus
from symbiote.projections.projector import Projector

async def main() -> None:
    bus = await Bus.connect(sys.argv[1])
    await Projector(bus, sys.argv[2], batch=int(sys.argv[3])).run()

asyncio.run(main())
"""


def _spawn_projector(nats_url: str, dsn: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", PROJECTOR_SCRIPT, nats_url, dsn, str(RNG.choice([64, 128, 256]))],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _projector_processes(nats_url: str) -> list[int]:
    """Live processes running the projector script against this server (workers included)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"projections.projector import Projector" in cmdline and nats_url.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


async def _checkpoint(dsn: str) -> int:
    try:
        rows = await fetch(dsn, "SELECT last_seq FROM projection_checkpoints WHERE name = 'main'")
    except asyncpg.UndefinedTableError:
        return 0  # not migrated yet
    return int(rows[0]["last_seq"]) if rows else 0


async def _consistent(dsn: str) -> int:
    """The committed checkpoint, after checking every table holds exactly the events up to it."""
    conn = await connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read"):
            checkpoint = await conn.fetchval("SELECT last_seq FROM projection_checkpoints WHERE name = 'main'") or 0
            count, highest = await conn.fetchrow("SELECT count(*), coalesce(max(seq), 0) FROM events")
            over = await conn.fetchval("SELECT count(*) FROM commands WHERE last_seq > $1", checkpoint)
            memory_over = await conn.fetchval("SELECT count(*) FROM memory WHERE seq > $1", checkpoint)
    finally:
        await conn.close()
    assert highest == checkpoint and count == checkpoint, (checkpoint, count, highest)
    assert over == 0 and memory_over == 0
    return int(checkpoint)


async def test_sigkill_during_a_burst_never_applies_twice_or_skips(actors: Actors, nats_url: str, pg_dsn: str) -> None:
    a = actors
    stranger = SigningKey.generate("user:eve")
    items = burst(a, 5000, stranger)
    publisher = asyncio.create_task(publish_all(a.bus, items, chunk=50, pause=0.04))
    kills = 0
    proc = _spawn_projector(nats_url, pg_dsn)
    try:
        while not publisher.done() or kills < 3:
            before = await _checkpoint(pg_dsn)
            deadline = asyncio.get_running_loop().time() + 20
            while await _checkpoint(pg_dsn) <= before and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)  # let it commit something first
            await asyncio.sleep(RNG.uniform(0.0, 0.25))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            await _consistent(pg_dsn)  # whatever was committed is whole
            proc = _spawn_projector(nats_url, pg_dsn)
        last = await publisher
        deadline = asyncio.get_running_loop().time() + 60
        while await _checkpoint(pg_dsn) < last:
            assert asyncio.get_running_loop().time() < deadline, "the projector did not catch up"
            await asyncio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert kills >= 3
    assert await _consistent(pg_dsn) == last
    deadline = asyncio.get_running_loop().time() + 10
    while _projector_processes(nats_url):  # its worker processes died with it
        assert asyncio.get_running_loop().time() < deadline, _projector_processes(nats_url)
        await asyncio.sleep(0.1)
    report = await replay(a.bus, pg_dsn)
    assert report.compared and not report.mismatches, (report.note, report.mismatches)
    assert report.through_seq == last
    conn = await connect(pg_dsn)
    try:
        live = await table_digests(conn)
    finally:
        await conn.close()
    assert live == report.digests
    assert live["events"].rows == last and live["commands"].rows > 1000


# -- memory ----------------------------------------------------------------------------------------
async def test_memory_search_finds_the_relevant_past_input_first(actors: Actors, pg_dsn: str) -> None:
    a = actors
    said = [
        "book a table for two at the italian restaurant on friday",
        "remind me to water the tomato plants in the garden",
        "the dentist appointment moved to tuesday at nine",
        "send the quarterly tax documents to the accountant",
        "what is the capital of mongolia",
        "search my memory for the garden",  # the request itself, as the agent passes on only "the garden"
    ]
    for text in said:
        await a.send(a.text(text))
    await a.send(a.text("a stranger's dentist story", SigningKey.generate("user:eve")))  # unverified: not remembered
    last = await a.bus.last_seq()
    assert (await Projector(a.bus, pg_dsn, follow=False).run()).last_seq == last
    async with MemoryStore(pg_dsn) as store:
        hits = await store.search("when is my dentist appointment?", k=3)
        assert hits[0].text == "the dentist appointment moved to tuesday at nine"
        assert hits[0].score > hits[1].score and len(hits) == 3
        assert all(h.kind == "input" for h in hits)
        hits = await store.search("taxes for the accountant")
        assert hits[0].text == "send the quarterly tax documents to the accountant"
        search = memory_search_builtin(store)
        out = await search({"query": "what did I ask you yesterday about the garden", "k": 2})
        assert out["query"] == "the garden"
        assert out["hits"][0]["text"] == "remind me to water the tomato plants in the garden"
        assert set(out["hits"][0]) == {"seq", "text", "at", "score"} and len(out["hits"]) == 1  # one related
        out = await search({"query": "the garden"})
        assert out["hits"][0]["text"] == "remind me to water the tomato plants in the garden"
        assert "search my memory for the garden" not in [hit["text"] for hit in out["hits"]]
        assert len(out["hits"]) == 1, out  # the other texts are not about the garden
        assert (await search({"query": "recall quantum chromodynamics on a lattice"}))["hits"] == []
        asked = "send the quarterly tax documents to the accountant"  # a past request, word for word
        out = await search({"query": asked})
        assert out["hits"][0]["text"] == asked and out["hits"][0]["score"] > 0.99
        out = await search({"query": f"search my memory for {asked}"})
        assert out["query"] == asked and out["hits"][0]["text"] == asked
        recalled = await store.recall("the dentist appointment moved to tuesday at nine")
        assert "the dentist appointment moved to tuesday at nine" not in recalled
        assert not any("stranger" in t for t in recalled)
    broken = MemoryStore("postgresql://nobody@127.0.0.1:1/none", recall_timeout_s=2)
    assert await broken.recall("anything") == []  # best effort: never raises
    with pytest.raises(StoreError):
        await broken.search("anything")
    await broken.close()
