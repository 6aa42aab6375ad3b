"""Embedded nats-server and PostgreSQL: real processes, no mocks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from structlog.testing import capture_logs

from symbiote.bus.server import NatsServer, NatsServerConfig
from symbiote.bus.stream import Bus
from symbiote.errors import BusError, ServerStartError
from symbiote.projections.pgserver import PostgresServer, PostgresServerConfig

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _process_tree(pid: int) -> set[int]:
    """``pid`` and its live (non-zombie) descendants, from /proc (Linux)."""
    table: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()
        if fields[0] not in (b"Z", b"X"):
            table[int(name)] = int(fields[1])
    tree = {pid} if pid in table else set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = {p for p, ppid in table.items() if ppid == parent} - tree
        tree |= children
        frontier.extend(children)
    return tree


def _running(pids: set[int]) -> set[int]:
    """Those of ``pids`` that are still running (zombies do not count)."""
    running = set()
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        if raw[raw.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X"):
            running.add(pid)
    return running


@contextlib.contextmanager
def _occupied_port() -> Iterator[int]:
    """A loopback port held by a listening socket for the duration."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def _get_json(url: str) -> Any:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    writer.write(f"GET {target} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n", 1)[0], head
    return json.loads(body)


async def _stream_messages(url: str, stream: str) -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.state.messages)
    finally:
        await nc.close()


# --------------------------------------------------------------------------
# nats-server
# --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_nats_binary_comes_from_the_wheel() -> None:
    path = Path(NatsServer.binary_path())
    assert path.is_file()
    assert os.access(path, os.X_OK)
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=True, timeout=20)
    assert out.stdout.startswith("nats-server: v2.")


@pytest.mark.timeout(30)
async def test_nats_fixture_jetstream_publish_is_acked(nats_server: NatsServer, nats_url: str) -> None:
    assert nats_server.running
    assert nats_url == nats_server.url
    assert nats_url.startswith("nats://127.0.0.1:")
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        ack = await js.publish("t.one", b"hello")
        assert ack.stream == "T"
        assert ack.seq == 1
        msg = await js.get_msg("T", 1)
        assert msg.data == b"hello"
    finally:
        await nc.close()


@pytest.mark.timeout(30)
async def test_nats_config_has_sync_interval_always(tmp_path: Path) -> None:
    async with NatsServer(NatsServerConfig(store_dir=tmp_path, http_port=0)) as server:
        text = server.config_path.read_text()
        assert "sync_interval: always" in text
        assert server.monitor_url is not None
        varz = await _get_json(server.monitor_url + "/varz")
        assert varz["jetstream"]["config"]["sync_always"] is True
        assert varz["max_payload"] == 1024 * 1024
        assert await _get_json(server.monitor_url + "/healthz?js-enabled-only=true") == {"status": "ok"}


@pytest.mark.timeout(30)
async def test_nats_sync_always_can_be_turned_off(tmp_path: Path) -> None:
    async with NatsServer(NatsServerConfig(store_dir=tmp_path, http_port=0, sync_always=False)) as server:
        assert "sync_interval" not in server.config_path.read_text()
        assert server.monitor_url is not None
        varz = await _get_json(server.monitor_url + "/varz")
        assert not varz["jetstream"]["config"].get("sync_always", False)


async def test_nats_with_a_token_serves_only_its_holders(tmp_path: Path) -> None:
    async with NatsServer(NatsServerConfig(store_dir=tmp_path / "nats", token="s3cret")) as server:
        for token in (None, "wrong"):
            with capture_logs() as logged, pytest.raises(BusError, match="refused"):
                await asyncio.wait_for(Bus.connect(server.url, token=token), 10)
            assert [entry["event"] for entry in logged] == []  # said once, by the error, not logged per try
        assert server.config_path.stat().st_mode & 0o077 == 0  # the token is in it
        bus = await Bus.connect(server.url, token="s3cret")
        try:
            await bus.ensure_stream()
            assert await bus.last_seq() == 0
        finally:
            await bus.close()


@pytest.mark.timeout(60)
async def test_nats_restart_keeps_port_messages_and_consumers(tmp_path: Path) -> None:
    async with NatsServer(NatsServerConfig(store_dir=tmp_path)) as server:
        url = server.url
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            await js.add_stream(name="R", subjects=["r.>"])
            for i in range(3):
                await js.publish(f"r.{i}", str(i).encode())
            sub = await js.pull_subscribe("r.>", durable="worker", stream="R")
            (first,) = await sub.fetch(1, timeout=5)
            await first.ack_sync()
        finally:
            await nc.close()

        old_pid = server.pid
        assert old_pid is not None
        await server.restart()
        assert server.url == url
        assert server.pid != old_pid
        assert not _pid_alive(old_pid)

        assert await _stream_messages(url, "R") == 3
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            sub = await js.pull_subscribe("r.>", durable="worker", stream="R")
            msgs = await sub.fetch(2, timeout=5)
            assert [m.data for m in msgs] == [b"1", b"2"]  # the durable consumer resumed after the ack
            for m in msgs:
                await m.ack_sync()
        finally:
            await nc.close()
        assert "Server is ready" in server.log_path.read_text()


@pytest.mark.timeout(60)
async def test_nats_kill_then_start_keeps_acked_messages(tmp_path: Path) -> None:
    server = NatsServer(NatsServerConfig(store_dir=tmp_path))
    await server.start()
    try:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name="K", subjects=["k"])
            for i in range(5):
                await js.publish("k", str(i).encode())
        finally:
            await nc.close()
        pid = server.pid
        assert pid is not None
        await server.kill()
        assert not _pid_alive(pid)
        assert not server.running
        await server.start()
        assert await _stream_messages(server.url, "K") == 5
    finally:
        await server.stop()


@pytest.mark.timeout(30)
async def test_nats_stop_leaves_no_process_and_is_idempotent(tmp_path: Path) -> None:
    server = NatsServer(NatsServerConfig(store_dir=tmp_path))
    await server.stop()  # never started: fine
    await server.start()
    try:
        await server.start()  # already running: no-op
        pid = server.pid
        assert pid is not None
        assert _pid_alive(pid)
    finally:
        await server.stop()
    assert not _pid_alive(pid)
    assert _process_tree(pid) == set()
    assert server.pid is None
    assert not server.running
    await server.stop()
    await server.kill()


@pytest.mark.timeout(30)
async def test_nats_missing_binary_raises_with_log(tmp_path: Path) -> None:
    server = NatsServer(NatsServerConfig(store_dir=tmp_path), binary=str(tmp_path / "no-such-nats-server"))
    with pytest.raises(ServerStartError) as info:
        await server.start()
    assert "log" in info.value.fields
    assert "no-such-nats-server" in info.value.fields["log"]
    assert not server.running


@pytest.mark.timeout(30)
async def test_nats_binary_that_exits_raises_with_its_output(tmp_path: Path) -> None:
    fake = tmp_path / "fake-nats-server"
    fake.write_text("#!/bin/sh\necho 'fake server: boom' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    server = NatsServer(NatsServerConfig(store_dir=tmp_path / "store"), binary=str(fake))
    with pytest.raises(ServerStartError) as info:
        await server.start()
    assert "fake server: boom" in info.value.fields["log"]
    assert info.value.fields["returncode"] == 3


@pytest.mark.timeout(30)
async def test_nats_occupied_port_raises_with_log(tmp_path: Path) -> None:
    with _occupied_port() as port:
        server = NatsServer(NatsServerConfig(store_dir=tmp_path, port=port))
        with pytest.raises(ServerStartError) as info:
            await server.start()
    log = info.value.fields["log"]
    assert "address already in use" in log.lower(), log
    pid = info.value.fields["pid"]
    assert pid is not None
    assert not _pid_alive(pid)
    assert not server.running


# --------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_pg_dsn_fixture_has_vector(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT '[1,2,3]'::vector::text") == "[1,2,3]"
        assert await conn.fetchval("SELECT '[1,0]'::vector <-> '[0,0]'::vector") == pytest.approx(1.0)
    finally:
        await conn.close()


@pytest.mark.timeout(120)
async def test_pg_server_fixture_database_and_listen_address(pg_server: PostgresServer) -> None:
    password = pg_server.password_file.read_text().strip()
    assert pg_server.dsn == f"postgresql://symbiote:{password}@127.0.0.1:{pg_server.port}/symbiote"
    assert stat.S_IMODE(pg_server.password_file.stat().st_mode) == 0o600
    for wrong in (f"postgresql://symbiote@127.0.0.1:{pg_server.port}/symbiote", pg_server.dsn.replace(password, "x")):
        with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
            await asyncpg.connect(wrong)  # another local user who reaches the port reads nothing
    conn = await asyncpg.connect(pg_server.dsn)
    try:
        assert await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
        assert await conn.fetchval("SHOW unix_socket_directories") == ""
        assert (await conn.fetchval("SHOW server_version")).startswith("18.")
    finally:
        await conn.close()


@pytest.mark.timeout(120)
async def test_pg_create_and_drop_database(pg_server: PostgresServer) -> None:
    dsn = await pg_server.create_database("scratch db")  # a name that needs quoting
    assert dsn.endswith("/scratch%20db")
    held = await asyncpg.connect(dsn)  # drop must disconnect sessions
    try:
        assert await held.fetchval("SELECT '[1]'::vector::text") == "[1]"
        await pg_server.drop_database("scratch db")
    finally:
        with contextlib.suppress(Exception):
            await held.close()
    conn = await asyncpg.connect(pg_server.dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = 'scratch db'") == 0
    finally:
        await conn.close()


@pytest.mark.timeout(120)
async def test_pg_restart_on_existing_data_dir(pg_data_dir: Path) -> None:
    config = PostgresServerConfig(data_dir=pg_data_dir)
    async with PostgresServer(config) as server:
        conn = await asyncpg.connect(server.dsn)
        try:
            await conn.execute("CREATE TABLE t (id int PRIMARY KEY, v vector(3))")
            await conn.execute("INSERT INTO t VALUES (1, '[1,2,3]')")
        finally:
            await conn.close()
        port = server.port
        await server.restart()
        assert server.port == port

    # A new instance on the same data dir: no initdb, data still there.
    server = PostgresServer(config)
    async with server:
        conn = await asyncpg.connect(server.dsn)
        try:
            assert await conn.fetchval("SELECT v::text FROM t WHERE id = 1") == "[1,2,3]"
        finally:
            await conn.close()
    assert server.log_path.read_text().count("starting initdb") == 1


@pytest.mark.timeout(120)
async def test_pg_stop_leaves_no_process(pg_data_dir: Path) -> None:
    server = PostgresServer(PostgresServerConfig(data_dir=pg_data_dir))
    await server.start()
    try:
        pid = server.pid
        assert pid is not None
        conn = await asyncpg.connect(server.dsn)  # a backend process, too
        tree = _process_tree(pid)
        assert len(tree) > 3  # postmaster, checkpointer, walwriter, …, our backend
        await server.stop()
        with contextlib.suppress(Exception):
            await conn.close(timeout=1)
    finally:
        await server.stop()
    assert not _pid_alive(pid)
    assert _running(tree) == set()
    assert not server.running
    await server.stop()  # idempotent
    assert "database system is shut down" in server.log_path.read_text()


@pytest.mark.timeout(120)
async def test_pg_kill_then_start_recovers(pg_data_dir: Path) -> None:
    server = PostgresServer(PostgresServerConfig(data_dir=pg_data_dir))
    await server.start()
    try:
        conn = await asyncpg.connect(server.dsn)
        await conn.execute("CREATE TABLE k (id int)")
        await conn.execute("INSERT INTO k VALUES (7)")
        pid = server.pid
        assert pid is not None
        tree = _process_tree(pid)
        await server.kill()
        with contextlib.suppress(Exception):
            await conn.close(timeout=1)
        assert _running(tree) == set()
        await server.start()
        conn = await asyncpg.connect(server.dsn)
        try:
            assert await conn.fetchval("SELECT id FROM k") == 7
        finally:
            await conn.close()
    finally:
        await server.stop()


@pytest.mark.timeout(120)
async def test_pg_occupied_port_raises_with_log(pg_data_dir: Path) -> None:
    with _occupied_port() as port:
        server = PostgresServer(PostgresServerConfig(data_dir=pg_data_dir, port=port))
        with pytest.raises(ServerStartError) as info:
            await server.start()
    log = info.value.fields["log"]
    assert "could not bind" in log or "Address already in use" in log, log
    pid = info.value.fields["pid"]
    assert pid is not None
    assert not _pid_alive(pid)
    assert not server.running


@pytest.mark.timeout(30)
async def test_pg_foreign_data_dir_raises(pg_data_dir: Path) -> None:
    server = PostgresServer(PostgresServerConfig(data_dir=pg_data_dir))
    (pg_data_dir / "pgdata").mkdir(parents=True)
    (pg_data_dir / "pgdata" / "something").write_text("not a cluster")
    with pytest.raises(ServerStartError) as info:
        await server.start()
    assert "log" in info.value.fields
    assert not server.running


# --------------------------------------------------------------------------
# leftovers: a server must never outlive its supervisor, nor share its data with a second one
# --------------------------------------------------------------------------

_SUPERVISOR = """
import asyncio, sys
from pathlib import Path
from symbiote.bus.server import NatsServer, NatsServerConfig
from symbiote.projections.pgserver import PostgresServer, PostgresServerConfig

async def main() -> None:
    nats = NatsServer(NatsServerConfig(store_dir=Path(sys.argv[1])))
    pg = PostgresServer(PostgresServerConfig(data_dir=Path(sys.argv[2])))
    await nats.start()
    await pg.start()
    print(nats.pid, pg.pid, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


@pytest.mark.timeout(120)
async def test_servers_stop_when_their_supervisor_is_killed(tmp_path: Path, pg_data_dir: Path) -> None:
    """``symbiote up`` killed with SIGKILL (or its terminal closed) cannot stop its servers in order:
    the kernel signals them (PR_SET_PDEATHSIG), so none is left running on the data."""
    script = tmp_path / "supervisor.py"
    script.write_text(_SUPERVISOR)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(tmp_path / "nats"), str(pg_data_dir), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 90)
    nats_pid, pg_pid = (int(p) for p in line.split())
    assert _pid_alive(nats_pid) and _pid_alive(pg_pid)
    trees = _process_tree(nats_pid) | _process_tree(pg_pid)
    proc.kill()
    await proc.wait()
    for _ in range(200):
        if not _running(trees):
            break
        await asyncio.sleep(0.1)
    assert _running(trees) == set()
    async with PostgresServer(PostgresServerConfig(data_dir=pg_data_dir)) as again:  # starts cleanly
        assert again.running


@pytest.mark.timeout(120)
async def test_a_second_server_on_the_same_data_is_refused_in_one_line(tmp_path: Path, pg_data_dir: Path) -> None:
    async with NatsServer(NatsServerConfig(store_dir=tmp_path)) as first:
        with pytest.raises(ServerStartError) as info:
            await NatsServer(NatsServerConfig(store_dir=tmp_path)).start()
        assert f"(pid {first.pid}) still serves this store" in info.value.message
        assert f"kill {first.pid}" in info.value.message
        assert first.running
    async with PostgresServer(PostgresServerConfig(data_dir=pg_data_dir)) as pg:
        with pytest.raises(ServerStartError) as info:
            await PostgresServer(PostgresServerConfig(data_dir=pg_data_dir)).start()
        assert f"(pid {pg.pid}) still serves this data" in info.value.message
        assert "\n" not in info.value.message
        assert pg.running


@pytest.mark.timeout(120)
async def test_pg_a_cluster_made_with_trust_gets_a_password(pg_data_dir: Path) -> None:
    """A cluster made before the password existed trusted every local connection: its next start
    gives the superuser a password and requires it."""
    async with PostgresServer(PostgresServerConfig(data_dir=pg_data_dir)) as server:
        port = server.port
    hba = pg_data_dir / "pgdata" / "pg_hba.conf"
    refuse = "host all nobody 127.0.0.1/32 reject"  # the operator's own rule: it stays as it is
    commented = "host all all 10.0.0.0/8 trust # the lab"  # a comment after the method hides nothing
    hba.write_text(refuse + "\n" + commented + "\n" + hba.read_text().replace("scram-sha-256", "trust"))
    server.password_file.write_text("")  # as a crash while it was written would leave it
    async with PostgresServer(PostgresServerConfig(data_dir=pg_data_dir, port=port)) as again:
        rules = [line.split() for line in hba.read_text().splitlines() if line.strip() and not line.startswith("#")]
        assert rules[0] == refuse.split()
        assert len(rules) > 1 and all(rule[-1] == "scram-sha-256" for rule in rules[1:])
        assert len(again.password) > 20 and stat.S_IMODE(again.password_file.stat().st_mode) == 0o600
        assert not list(pg_data_dir.glob(".password*"))  # noqa: ASYNC240 - a test looking at a folder
        conn = await asyncpg.connect(again.dsn)
        await conn.close()
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(f"postgresql://symbiote:wrong@127.0.0.1:{port}/symbiote")


def test_only_a_server_spawned_from_the_main_thread_is_tied_to_its_parent() -> None:
    """PR_SET_PDEATHSIG follows the thread that forked: a server spawned from a worker thread
    would be stopped when that thread ends, so it is not armed there."""
    import threading

    from symbiote.bus.server import _signal_on_parent_death

    assert _signal_on_parent_death(signal.SIGTERM) is not None
    found: list[object] = []
    worker = threading.Thread(target=lambda: found.append(_signal_on_parent_death(signal.SIGTERM)))
    worker.start()
    worker.join()
    assert found == [None]


async def test_sighup_stops_up_unless_it_was_started_under_nohup() -> None:
    from symbiote.runtime import install_signal_handlers

    loop = asyncio.get_running_loop()
    before = signal.getsignal(signal.SIGHUP)
    try:
        for ignored in (True, False):
            signal.signal(signal.SIGHUP, signal.SIG_IGN if ignored else signal.SIG_DFL)
            stop = asyncio.Event()
            install_signal_handlers(stop)
            os.kill(os.getpid(), signal.SIGHUP)
            if ignored:
                await asyncio.sleep(0.2)
                assert not stop.is_set()
            else:
                await asyncio.wait_for(stop.wait(), 5)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
    finally:
        signal.signal(signal.SIGHUP, before)
