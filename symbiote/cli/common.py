"""What every ``symbiote`` subcommand shares: consoles, options, the data dir, the bus, printing rows."""

from __future__ import annotations

import asyncio
import enum
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from symbiote.bus.ids import is_event_id
from symbiote.bus.server import NatsServer, NatsServerConfig
from symbiote.bus.stream import Bus
from symbiote.cli.chain import EventRow
from symbiote.errors import ServerError, SymbioteError
from symbiote.home import DataDir, default_data_dir
from symbiote.logs import configure_logging
from symbiote.projections.fold import command_id_of, output_said
from symbiote.projections.jsontext import json_text

__all__ = [
    "DataDirOpt",
    "JsonOpt",
    "NatsOpt",
    "_bus",
    "_emit",
    "_home",
    "_print_row",
    "_run",
    "cell",
    "console",
    "err",
    "plain",
]


def _console(*, stderr: bool = False) -> Console:
    """A console for stdout (or stderr). Written to a pipe or a file, with no ``COLUMNS`` set,
    it breaks no line at 80 columns: a kid or a command id stays whole, to be copied, and tables
    take up to 200 columns."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty() or os.environ.get("COLUMNS"):
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=200, soft_wrap=True)


console = _console()
err = _console(stderr=True)
T = TypeVar("T")


def plain(value: object) -> str:
    """``value`` as text that rich prints as it is: data from the log or from a phone may hold
    ``[tags]`` that would otherwise restyle or hide what is shown (or fail to parse)."""
    return escape(str(value))


def print_error(exc: SymbioteError) -> None:
    """Print a failure for people: a server that would not start, or stopped, is named with the end of its
    log (its lines as lines, not one escaped string) and where the whole log is."""
    if not isinstance(exc, ServerError):
        err.print(f"[red]error:[/red] {plain(exc)}")
        return
    err.print(f"[red]error:[/red] {plain(exc.message)}")
    tail = [line for line in str(exc.fields.get("log", "")).splitlines() if line.strip()][-8:]
    if tail:
        err.print("  the end of its log:")
        for line in tail:
            err.print(f"    {plain(line)}")
    if exc.fields.get("log_path"):
        err.print(f"  its whole log: {plain(exc.fields['log_path'])}")


def command_id_arg(value: str) -> str:
    """A command or request id as typed: surrounding blanks dropped, letters lower-cased (ids are
    lower-case UUIDs); anything else exits with status 2, naming what an id looks like."""
    found = value.strip().lower()
    if not is_event_id(found):
        err.print(
            f"[red]error:[/red] {plain(value)!r} is not an id: a command or request id is a UUID "
            "(as `symbiote approvals`, `say` and `events` show them)"
        )
        raise typer.Exit(2)
    return found


def cell(value: object) -> Text:
    """A table cell showing ``value`` as it is (see :func:`plain`)."""
    return Text(str(value))


class LogLevel(enum.StrEnum):
    """How much a long-running command logs (to stderr)."""

    debug = "debug"
    info = "info"  # every decision
    warning = "warning"
    error = "error"


LogLevelOpt = Annotated[
    LogLevel, typer.Option("--log-level", help="debug, info (every decision as a line), warning or error")
]

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default $SYMBIOTE_DATA_DIR or ~/.local/share/symbiote)"),
]
NatsOpt = Annotated[str | None, typer.Option("--nats-url", help="NATS URL (default: the running runtime's)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object a line")]


def _home(data_dir: Path | None) -> DataDir:
    return DataDir((data_dir or default_data_dir()).expanduser().resolve())


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    configure_logging("warning")
    try:
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    except SymbioteError as exc:
        print_error(exc)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@asynccontextmanager
async def _bus(home: DataDir, nats_url: str | None, *, start_if_down: bool = False) -> AsyncIterator[Bus]:
    """A bus connected to ``--nats-url``, the running runtime, or (for init) a temporary server."""
    runtime = home.read_runtime() or {}
    url = nats_url or runtime.get("nats_url")
    if url:
        # the running runtime's embedded server wants the data dir's token; --nats-url may carry
        # its own credentials (nats://TOKEN@host:port)
        token = home.nats_token() if not nats_url and runtime.get("nats_token") else None
        bus = await Bus.connect(str(url), name="symbiote-cli", token=token)
        try:
            yield bus
        finally:
            await bus.close()
        return
    if not start_if_down:
        raise SymbioteError("the runtime is not up: run `symbiote up` (or pass --nats-url)", data_dir=str(home.root))
    home.ensure()
    token = home.nats_token()
    with home.lock("a symbiote command that reads the log"):
        async with NatsServer(NatsServerConfig(store_dir=home.nats_dir, token=token)) as server:
            bus = await Bus.connect(server.url, name="symbiote-cli", token=token)
            try:
                yield bus
            finally:
                await bus.close()


# -- init / up -------------------------------------------------------------------------------
def _emit(row: EventRow, as_json: bool) -> None:
    if as_json:
        print(json.dumps(row.as_json(), ensure_ascii=False), flush=True)
    else:
        _print_row(row)


async def emit_chain(chain: AsyncIterator[EventRow], as_json: bool) -> EventRow | None:
    """Print each event of a followed chain as it comes; the last one (None: none came), which
    :func:`~symbiote.cli.chain.wait_status` turns into the exit status of ``--wait``."""
    last = None
    async for last in chain:
        _emit(last, as_json)
    return last


def _print_row(row: EventRow, *, compact: bool = False) -> None:
    event = row.event
    signed = f"[dim]✓ {plain(', '.join(row.verified))}[/dim]" if row.verified else ""
    if row.problem and signed:  # signed as it says, yet without effect (a registry change refused)
        signed += f" [red]refused: {plain(row.problem)}[/red]"
    elif row.problem:
        signed = f"[red]✗ {plain(row.problem)}[/red]"
    if event is None:
        where = f"{plain(row.subject)}  " if row.subject else ""
        console.print(f"{row.seq:>6}  {where}[red]{plain(row.problem)}[/red]", soft_wrap=True)
        return
    summary = _summary(event.type, event.body)
    # soft wrap: a long line runs on instead of being broken inside an id someone has to copy
    if compact:
        console.print(f"  {plain(f'{event.type:<28}')} {summary}", soft_wrap=True)
    else:
        kind, actor = plain(f"{event.type:<27}"), plain(f"{event.actor:<16}")
        command_id = command_id_of(row.subject)
        about = f"[dim]{command_id}[/dim]  " if command_id else ""  # which command, in the whole log
        console.print(f"{row.seq:>6}  {kind} {actor} {signed}  {about}{summary}", soft_wrap=True)


def _summary(kind: str, body: dict[str, Any]) -> str:
    """One line about an event's body, as rich markup (the body's own text escaped)."""
    if kind == "command.denied":
        return f"[red]{plain(body.get('reason'))}[/red]: {plain(body.get('detail'))}"
    return plain(_summary_text(kind, body))


def _map(body: dict[str, Any], key: str) -> dict[str, Any]:
    """``body[key]`` when it is a map, else an empty one (bodies shown need not be well formed)."""
    value = body.get(key)
    return value if isinstance(value, dict) else {}


def _summary_text(kind: str, body: dict[str, Any]) -> str:
    if kind.startswith("input."):
        return repr(body.get("text", ""))
    if kind == "command.proposed":
        return f"{body.get('command')} {json_text(body.get('args'))} confidence={body.get('confidence')}"
    if kind == "command.clarify":
        return str(body.get("question"))
    if kind == "command.suggested":
        return f"no command fits; suggest defining {_map(body, 'suggestion').get('name')!r}"
    if kind == "command.approval_requested":
        return f"needs {body.get('needs')} of {body.get('principals')}  →  symbiote approve {body.get('command_id')}"
    if kind in ("command.succeeded", "command.failed"):
        output = _map(body, "output")
        text = str(output_said(output) or "").strip()
        if text:
            return f"exit {body.get('exit_code')}: {text[:200]!r}"
        if output.get("hits") == []:  # memory.search
            return f"exit {body.get('exit_code')}: nothing related found in memory"
        return f"exit {body.get('exit_code')} (no output)"
    if kind == "command.started":
        return f"in {_map(body, 'sandbox').get('backend')}"
    if kind in ("key.registered", "key.revoked"):
        return f"{body.get('principal')} {body.get('kid')}"
    if kind == "command.defined":
        return str(_map(body, "definition").get("name"))
    if kind == "audit.checkpoint":
        return f"covers #{body.get('first_seq')}–#{body.get('last_seq')} ({body.get('count')} events)"
    return ""
