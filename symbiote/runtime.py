"""``symbiote up``: the embedded servers and the components, started and stopped as one.

Starts a real nats-server (JetStream, ``sync_interval: always``) and a real PostgreSQL with
pgvector from their wheels unless external URLs are given, makes sure the data directory is
initialized, runs the dispatcher and the agent (and, where present, the projector and the
HTTP API), writes ``runtime.json`` when everything is ready, and stops everything it
started, in reverse order, on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from symbiote.agents.planner import OpenAIPlanner
from symbiote.agents.service import Agent
from symbiote.api.app import ApiServer
from symbiote.api.notify import TelegramNotifier
from symbiote.bootstrap import define_command, initialize
from symbiote.bus.server import ManagedServer, NatsServer, NatsServerConfig
from symbiote.bus.stream import Bus, redact_url
from symbiote.dispatcher.executors import Builtin, Executors
from symbiote.dispatcher.service import Dispatcher
from symbiote.home import DataDir
from symbiote.lifecycle import cancel_and_wait, tune_gc
from symbiote.projections import MEMORY_SEARCH_DEFINITION, Checkpointer, Projections, memory_search_builtin
from symbiote.projections.pgserver import PostgresServer, PostgresServerConfig
from symbiote.registry.definition import load_definition
from symbiote.registry.follower import RegistryFollower
from symbiote.sandbox import BubblewrapSandbox

__all__ = ["Runtime", "RuntimeOptions"]

log = structlog.get_logger("symbiote.runtime")


@dataclass(frozen=True)
class RuntimeOptions:
    """What ``up`` starts and where it connects."""

    nats_url: str | None = None
    postgres_dsn: str | None = None
    postgres: bool = True
    api: bool = True
    api_host: str = "127.0.0.1"
    api_port: int = 8443
    name: str | None = None
    llm_url: str | None = None
    stream_replicas: int = 1
    llm_model: str | None = None


Component = Callable[[], Awaitable[None]]


class Runtime:
    """Everything ``symbiote up`` runs. ``async with Runtime(...)`` starts it; leaving stops it."""

    def __init__(self, home: DataDir, options: RuntimeOptions | None = None) -> None:
        self.home = home
        self.options = options or RuntimeOptions()
        self.nats_url: str | None = None
        self.postgres_dsn: str | None = None
        self.api_url: str | None = None
        self.bus: Bus | None = None
        self.dispatcher: Dispatcher | None = None
        self.agent: Agent | None = None
        self.extras: dict[str, Any] = {}
        self.servers: list[ManagedServer] = []  # the embedded servers started here
        self._stack = AsyncExitStack()

    async def start(self) -> None:
        """Start servers and components; on any failure, stop what was started and re-raise."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        stack = self._stack
        stack.enter_context(self.home.lock("symbiote up"))  # one runtime per data dir, before touching it
        self.home.ensure()
        problems = BubblewrapSandbox().preflight()
        if problems:
            log.warning("sandbox.preflight", problems=problems, note="sandboxed commands will fail closed")
        nats_token: str | None = None
        if self.options.nats_url:
            self.nats_url = self.options.nats_url
        else:  # only holders of the data dir's token may use the embedded server
            nats_token = self.home.nats_token()
            port = _remembered_port(self.home.nats_port_file)
            nats = NatsServer(NatsServerConfig(store_dir=self.home.nats_dir, token=nats_token, port=port))
            await stack.enter_async_context(nats)
            self.servers.append(nats)
            self.nats_url = nats.url
            # the next start takes the same port if it can: a client left running (an extra
            # dispatcher, `events --follow`) reconnects by itself when `up` comes back
            self.home.nats_port_file.write_text(f"{nats.port}\n")
        self.bus = await Bus.connect(self.nats_url, name="symbiote-runtime", token=nats_token)
        stack.push_async_callback(self.bus.close)
        await self.bus.ensure_stream(replicas=self.options.stream_replicas)
        report = await initialize(self.bus, self.home, name=self.options.name)
        if report.created_keys or report.registered or report.defined:
            log.info("init", created=report.created_keys, registered=report.registered, defined=report.defined)
        if self.options.postgres_dsn:
            self.postgres_dsn = self.options.postgres_dsn
        elif self.options.postgres:
            pg = PostgresServer(PostgresServerConfig(data_dir=self.home.postgres_dir))
            await stack.enter_async_context(pg)
            self.servers.append(pg)
            self.postgres_dsn = pg.dsn
        builtins: dict[str, Builtin] = {}
        recall = None
        if self.postgres_dsn:
            projections = Projections(
                self.bus, self.postgres_dsn, self.home.load_key("runtime"), self.home.checkpoints_dir
            )
            await stack.enter_async_context(projections)
            self.extras["projections"] = projections
            builtins["memory.search"] = memory_search_builtin(projections.memory)
            recall = projections.memory.recall
            await self._define_memory_search()
        else:  # no projections: the signed checkpoints still go to NATS and to files
            checkpointer = Checkpointer(self.bus, self.home.load_key("runtime"), self.home.checkpoints_dir)
            await stack.enter_async_context(checkpointer)
            self.extras["checkpointer"] = checkpointer
        executors = Executors(self.home.workspaces_dir, builtins=builtins)
        self.dispatcher = Dispatcher(self.bus, self.home.load_key("runtime"), executors)
        await stack.enter_async_context(self.dispatcher)
        planner = None
        if self.options.llm_url:
            planner = OpenAIPlanner(self.options.llm_url, self.options.llm_model or "default")
        self.agent = Agent(self.bus, self.home.load_key("agent"), planner=planner, recall=recall)
        await stack.enter_async_context(self.agent)
        if self.options.api:
            api = ApiServer(self.bus, self.home, self.options.api_host, self.options.api_port)
            await stack.enter_async_context(api)
            self.api_url = api.public_url
            bot, chat = os.environ.get("SYMBIOTE_TELEGRAM_TOKEN"), os.environ.get("SYMBIOTE_TELEGRAM_CHAT")
            if bot and chat:
                telegram = TelegramNotifier(bot, chat, api.public_url)
                api.board.notifiers.append(telegram)
                stack.push_async_callback(telegram.close)
            self.extras["api"] = api
        tune_gc()
        self.home.write_runtime(
            {
                "nats_url": self.nats_url,
                "nats_token": nats_token is not None,  # the token itself stays in its own 0600 file
                "postgres_dsn": self.postgres_dsn,
                "api_url": self.api_url,
                "pid": os.getpid(),
            }
        )
        stack.callback(self.home.clear_runtime)
        log.info(
            "runtime.up",
            nats_url=redact_url(self.nats_url),
            postgres_dsn=redact_url(self.postgres_dsn or ""),
            api_url=self.api_url,
        )

    async def _define_memory_search(self) -> None:
        """Register ``memory.search`` (served from the memory projection) once."""
        assert self.bus is not None
        state = await RegistryFollower(self.bus).refresh()
        if state.command_at("memory.search", state.applied_through + 1) is None:
            definition = load_definition(MEMORY_SEARCH_DEFINITION)
            await define_command(self.bus, self.home.load_key("owner"), definition)

    async def stop(self) -> None:
        """Stop everything started, in reverse order; idempotent."""
        stack, self._stack = self._stack, AsyncExitStack()
        self.servers = []
        await stack.aclose()

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve_until(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (by a signal handler), or until the dispatcher or the agent
        stops by itself: a runtime that goes on without them would accept requests nobody acts on.
        Stopping the runtime then re-raises the component's failure. An embedded server that
        stops by itself (PostgreSQL killed, say) stops the runtime too: this raises
        :class:`ServerExitedError` with the end of its log, rather than retrying forever."""
        services = [s._service_task for s in (self.dispatcher, self.agent) if s is not None and s._service_task]
        waiting = asyncio.create_task(stop.wait())
        servers = [asyncio.create_task(server.exited(), name=type(server).__name__) for server in self.servers]
        try:
            done, _ = await asyncio.wait([waiting, *services, *servers], return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait([waiting, *servers])
        if waiting in done:
            return  # asked to stop: a server that stopped with it (one signal to the whole group) is no crash
        for server in servers:
            if server in done:
                exited = server.result()
                log.error("runtime.server_stopped", server=server.get_name(), error=exited.message)
                raise exited
        for task in done:
            if task is not waiting:
                error = None if task.cancelled() else task.exception()
                log.error("runtime.component_stopped", component=task.get_name(), error=repr(error))


def _remembered_port(path: Path) -> int:
    """The port the embedded nats-server had last time, if it is free now; else 0 (any)."""
    try:
        port = int(path.read_text().strip())
    except (OSError, ValueError):
        return 0
    if not 0 < port < 65536:
        return 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return 0  # taken by something else now
    return port


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGINT / SIGTERM / SIGHUP (the terminal closed) set ``stop``. A SIGHUP already ignored
    (``nohup symbiote up``) stays ignored: whoever started it asked it to outlive the terminal."""
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if sig == signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN:
            continue
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
