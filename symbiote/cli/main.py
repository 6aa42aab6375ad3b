"""The ``symbiote`` command line (typer + rich)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column, Table

if TYPE_CHECKING:
    from symbiote.agents.voice import Transcript

from symbiote.bootstrap import define_command, initialize, register_key, revoke_key
from symbiote.bus.envelope import make_event
from symbiote.bus.events import parse_body
from symbiote.bus.stream import Bus, redact_url
from symbiote.cli.chain import EventRow, follow_chain, rows, wait_status
from symbiote.cli.common import (
    DataDirOpt,
    JsonOpt,
    LogLevel,
    LogLevelOpt,
    NatsOpt,
    _bus,
    _emit,
    _home,
    _print_row,
    _run,
    cell,
    console,
    emit_chain,
    err,
    plain,
    print_error,
)
from symbiote.errors import AudioError, SymbioteError
from symbiote.home import DataDir
from symbiote.lifecycle import tune_gc
from symbiote.logs import configure_logging
from symbiote.projections.checkpoints import Checkpointer
from symbiote.registry.definition import load_definition
from symbiote.registry.follower import RegistryFollower
from symbiote.signers.keys import public_key_from_kid, sign_event, valid_name

__all__ = ["app", "main"]

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="symbiote: a signed, event-sourced assistant runtime."
)
keys_app = typer.Typer(no_args_is_help=True, help="Keys: list, register someone's public key, revoke.")
commands_app = typer.Typer(no_args_is_help=True, help="Command definitions: list and add.")
app.add_typer(keys_app, name="keys")
app.add_typer(commands_app, name="commands")


@app.command()
def init(
    data_dir: DataDirOpt = None,
    nats_url: NatsOpt = None,
    name: Annotated[
        str | None,
        typer.Option(help="Your name, for owner:NAME and user:NAME (lower-case; default: your login name)"),
    ] = None,
) -> None:
    """Create the owner, agent, runtime and user keys, register them, define the default commands."""
    home = _home(data_dir)

    async def go() -> None:
        up = bool(nats_url or home.read_runtime())
        async with _bus(home, nats_url, start_if_down=True) as bus:
            report = await initialize(bus, home, name=name)
            if not up:  # no runtime checkpoints what init wrote to the log here: sign it off now
                await Checkpointer(bus, home.load_key("runtime"), home.checkpoints_dir).checkpoint_now()
        if not (report.created_keys or report.registered or report.defined):
            console.print(plain(f"Already initialized in {home.root}; nothing changed."))
            return
        console.print(plain(f"Initialized {home.root}"))
        for label, items in (
            ("keys created", report.created_keys),
            ("registered", report.registered),
            ("commands defined", report.defined),
        ):
            if items:
                console.print(plain(f"  {label}: {', '.join(items)}"))

    _run(go)


@app.command()
def up(
    data_dir: DataDirOpt = None,
    nats_url: Annotated[str | None, typer.Option(help="Use an external NATS instead of the embedded one")] = None,
    postgres_dsn: Annotated[str | None, typer.Option(help="Use an external PostgreSQL")] = None,
    no_postgres: Annotated[bool, typer.Option("--no-postgres", help="Do not start PostgreSQL")] = False,
    no_api: Annotated[bool, typer.Option("--no-api", help="Do not start the HTTP API")] = False,
    api_port: Annotated[int, typer.Option(help="HTTPS port of the API and phone page")] = 8443,
    api_host: Annotated[
        str, typer.Option(help="Address the API listens on (0.0.0.0 to reach it from a phone on your network)")
    ] = "127.0.0.1",
    demo: Annotated[bool, typer.Option(help="Run a short scripted demo once everything is up")] = False,
    llm_url: Annotated[
        str | None,
        typer.Option(
            envvar="SYMBIOTE_LLM_URL", help="OpenAI-compatible API of an LLM planner (vLLM: http://host:8000/v1)"
        ),
    ] = None,
    llm_model: Annotated[str | None, typer.Option(envvar="SYMBIOTE_LLM_MODEL", help="Model name for --llm-url")] = None,
    stream_replicas: Annotated[
        int, typer.Option(min=1, max=5, help="Replicas of the stream when --nats-url is a cluster (3 recommended)")
    ] = 1,
    log_level: LogLevelOpt = LogLevel.warning,
) -> None:
    """Start the embedded servers and the runtime; stop everything on Ctrl-C / SIGTERM / SIGHUP."""
    from symbiote.runtime import Runtime, RuntimeOptions, install_signal_handlers

    home = _home(data_dir)
    options = RuntimeOptions(
        nats_url=nats_url,
        postgres_dsn=postgres_dsn,
        postgres=not no_postgres,
        api=not no_api,
        api_port=api_port,
        api_host=api_host,
        llm_url=llm_url,
        llm_model=llm_model,
        stream_replicas=stream_replicas,
    )

    async def go() -> None:
        configure_logging(log_level.value)
        stop = asyncio.Event()
        install_signal_handlers(stop)
        async with Runtime(home, options) as runtime:
            console.print(f"[green]symbiote is up[/green]  data: {plain(home.root)}")
            nats = redact_url(runtime.nats_url or "")
            console.print(
                plain(
                    f"  nats: {nats}   postgres: {redact_url(runtime.postgres_dsn) if runtime.postgres_dsn else 'none'}"
                    f"   api: {runtime.api_url or 'none'}"
                )
            )
            shown = home.root / "demo-shown"
            if demo and shown.exists():
                console.print(
                    "[dim](the demo ran on this data dir's first start and is not run again: its requests "
                    "are signed with your user key, and the log should hold only what you asked)[/dim]"
                )
            elif demo:
                assert runtime.bus is not None
                await _demo(runtime.bus, home)
                shown.touch()
            standard = Path.home() / ".local" / "share" / "symbiote"
            env = "" if home.root == standard.resolve() else f"  export SYMBIOTE_DATA_DIR={home.root}\n"
            me, where = _how_to_call()
            console.print(
                f"\nTry it in another terminal{where}:\n"
                f"{env}"
                f'  {me} say "echo hello" --wait\n'
                f'  {me} say "run uname -a" --wait\n'
                f"  {me} approvals            # then: {me} approve <command id> --wait\n"
                f"  {me} events --follow\n"
                f"  {me} keys pair --name me  # your phone (start `up` with --api-host 0.0.0.0)\n"
                f"  {me} audit\n"
                "Stop with Ctrl-C.",
                soft_wrap=True,
            )
            await runtime.serve_until(stop)
            console.print("stopping…")
        console.print("stopped.")

    configure_logging(log_level.value)
    try:
        asyncio.run(go())
    except SymbioteError as exc:
        print_error(exc)
        raise typer.Exit(1) from exc


def _how_to_call() -> tuple[str, str]:
    """How to run this command from another terminal, and where ("" or " (in this folder)"): its
    name when that is what the PATH finds, its path relative to here when it lies below, else its
    full path (``python -m symbiote.cli`` as such)."""
    program = Path(sys.argv[0])
    if program.name != "symbiote":
        return f"{sys.executable} -m symbiote.cli", ""
    found = shutil.which("symbiote")
    if found is not None and Path(found).resolve() == program.resolve():
        return "symbiote", ""
    try:
        return str(program.resolve().relative_to(Path.cwd())), " (in this folder)"
    except ValueError:
        return str(program.resolve()), ""


DEMO = [
    ("runs at once (echo needs no approval)", "echo hello from symbiote"),
    ("asks what you mean (confidence too low)", "hello"),
    ("needs your approval (shell.run is risky)", "run uname -a"),
    ("nothing fits: the agent suggests a new command", "book a flight to Rome"),
]


async def _demo(bus: Bus, home: DataDir) -> None:
    console.rule("demo")
    for label, text in DEMO:
        console.print(f"\n[bold]» say {plain(repr(text))}[/bold]  [dim]({label})[/dim]")
        async for row in _say(bus, home, text, timeout_s=20):
            _print_row(row, compact=True)
    console.rule()


async def _say(bus: Bus, home: DataDir, text: str, *, timeout_s: float, wait: bool = True) -> AsyncIterator[EventRow]:
    user = home.load_key("user")
    event = sign_event(make_event("input.text", user.principal, {"text": text}), user)
    ack = await bus.publish(event)
    if not wait:
        return
    async for row in follow_chain(bus, event.id, ack.seq, timeout_s=timeout_s):
        yield row


@app.command()
def dispatcher(
    data_dir: DataDirOpt = None,
    nats_url: NatsOpt = None,
    log_level: LogLevelOpt = LogLevel.warning,
) -> None:
    """Run one more dispatcher on the runtime's stream (N dispatchers share the work; each command runs once)."""
    from symbiote.dispatcher import Dispatcher, Executors
    from symbiote.runtime import install_signal_handlers

    home = _home(data_dir)

    async def go() -> None:
        configure_logging(log_level.value)
        stop = asyncio.Event()
        install_signal_handlers(stop)
        async with contextlib.AsyncExitStack() as stack:
            bus = await stack.enter_async_context(_bus(home, nats_url))
            builtins = {}
            dsn = (home.read_runtime() or {}).get("postgres_dsn")
            if dsn:  # serve memory.search like the runtime's own dispatcher
                from symbiote.projections import MemoryStore, memory_search_builtin

                memory = await stack.enter_async_context(MemoryStore(str(dsn)))
                builtins["memory.search"] = memory_search_builtin(memory)
            executors = Executors(home.workspaces_dir, builtins=builtins)
            await stack.enter_async_context(Dispatcher(bus, home.load_key("runtime"), executors))
            tune_gc()
            print("dispatcher ready", flush=True)
            await stop.wait()

    try:
        asyncio.run(go())
    except SymbioteError as exc:
        print_error(exc)
        raise typer.Exit(1) from exc


# -- say / events -----------------------------------------------------------------------------
@app.command()
def say(
    text: Annotated[str | None, typer.Argument(help="What you ask for (or --audio)")] = None,
    audio: Annotated[
        Path | None,
        typer.Option(
            "--audio",
            help="Say it out loud instead: a recording (WAV, MP3, OGG, M4A, WebM…), transcribed on this machine",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Print what happens to the request")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait")] = 30.0,
    data_dir: DataDirOpt = None,
    nats_url: NatsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish a signed request: typed (input.text) or spoken (input.voice, with --audio)."""
    home = _home(data_dir)
    if (text is None) == (audio is None):
        err.print("[red]error:[/red] give either TEXT or --audio FILE")
        raise typer.Exit(2)
    if text is not None and not text.strip():
        err.print("[red]error:[/red] the request says nothing: nothing was sent")
        raise typer.Exit(2)

    async def go() -> int:
        user = home.load_key("user")
        if audio is not None:
            from symbiote.agents.voice import voice_event  # the speech stack loads only when used

            event = voice_event(await _transcribe(audio, as_json), user)
        else:
            event = sign_event(make_event("input.text", user.principal, {"text": text}), user)
        parse_body(event)  # a request its readers would refuse (too long, say) is not sent
        async with _bus(home, nats_url) as bus:
            ack = await bus.publish(event)
            if as_json:
                print(json.dumps({"id": event.id, "seq": ack.seq, "type": event.type}), flush=True)
            else:
                # the request's id, not a command's: the proposal that answers it has its own
                console.print(f"request {event.id} sent (seq {ack.seq})", soft_wrap=True)
            if not wait:
                return 0
            return wait_status(await emit_chain(follow_chain(bus, event.id, ack.seq, timeout_s=timeout), as_json))

    status = _run(go)
    if status:
        raise typer.Exit(status)


async def _transcribe(audio: Path, as_json: bool) -> Transcript:
    """Transcribe a recording for ``say --audio`` and show what was heard; refuse silence."""
    from symbiote.agents.voice import Transcriber

    transcript = await Transcriber().transcribe_async(audio)
    if as_json:
        heard = {"type": "transcript", "heard": transcript.text, "audio_ms": transcript.audio_ms}
        print(json.dumps({**heard, "seconds": round(transcript.seconds, 3)}), flush=True)
    else:
        console.print(plain(f"heard: {transcript.text or '(nothing)'}"), soft_wrap=True)
    if not transcript.text:
        raise AudioError("no speech was heard in the recording: nothing sent", "no_speech", path=str(audio))
    return transcript


@app.command()
def events(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events")] = False,
    from_seq: Annotated[int, typer.Option("--from", min=1, help="First stream sequence")] = 1,
    data_dir: DataDirOpt = None,
    nats_url: NatsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the log: seq, type, actor, who verifiably signed, and what each event says (and
    where events were deleted)."""
    home = _home(data_dir)

    async def go() -> None:
        # reading the log needs no runtime (as audit and why): with it down, its store is read here
        async with _bus(home, nats_url, start_if_down=not follow) as bus:
            async for row in rows(bus, from_seq=from_seq, follow=follow):
                _emit(row, as_json)

    _run(go)


# -- keys -------------------------------------------------------------------------------------
@keys_app.command("list")
def keys_list(data_dir: DataDirOpt = None, nats_url: NatsOpt = None, as_json: JsonOpt = False) -> None:
    """Registered keys with their role and validity."""
    home = _home(data_dir)

    async def go() -> None:
        async with _bus(home, nats_url) as bus:
            state = await RegistryFollower(bus).refresh()
        entries = sorted(state.keyring.keys.values(), key=lambda e: e.registered_seq)
        if as_json:
            for e in entries:
                print(
                    json.dumps(
                        {
                            "kid": e.kid,
                            "principal": e.principal,
                            "role": e.role,
                            "registered_seq": e.registered_seq,
                            "revoked_seq": e.revoked_seq,
                        }
                    )
                )
            return
        # the kid folds rather than being cut: it is what `keys revoke` takes
        kid = Column("kid", overflow="fold", min_width=20)
        table = Table("principal", "role", kid, "registered at seq", "revoked at seq")
        for e in entries:
            table.add_row(*map(cell, (e.principal, e.role, e.kid, e.registered_seq, e.revoked_seq or "—")))
        console.print(table)

    _run(go)


@keys_app.command("add")
def keys_add(
    name: Annotated[str, typer.Argument(help="Name of the key holder")],
    role: Annotated[str, typer.Option(help="owner, user, agent or runtime")],
    public_key: Annotated[str, typer.Option("--public-key", help="Their kid: ed25519:<base64url>")],
    data_dir: DataDirOpt = None,
    nats_url: NatsOpt = None,
) -> None:
    """Register someone else's public key as ROLE:NAME, signed by the owner key."""
    home = _home(data_dir)
    if role not in ("owner", "user", "agent", "runtime"):
        err.print("[red]error:[/red] role must be owner, user, agent or runtime")
        raise typer.Exit(2)

    if not valid_name(name):
        err.print("[red]error:[/red] NAME must be lower-case letters, digits, '_', '.' or '-' (at most 63)")
        raise typer.Exit(2)

    async def go() -> None:
        public_key_from_kid(public_key)
        async with _bus(home, nats_url) as bus:
            follower = RegistryFollower(bus)
            known = (await follower.refresh()).keyring.entry(public_key)
            if known is not None:  # the registry would refuse it: say so instead of logging it
                when = f", revoked at seq {known.revoked_seq}" if known.revoked_seq is not None else ""
                raise SymbioteError(
                    f"this key is already registered, as {known.principal} at seq {known.registered_seq}{when}; "
                    "a key is registered once"
                )
            seq = await register_key(bus, home.load_key("owner"), public_key, f"{role}:{name}")
            entry = (await follower.refresh()).keyring.entry(public_key)
            if entry is None or entry.registered_seq != seq:
                raise SymbioteError("the registry refused the registration (see `symbiote events`)", seq=seq)
        console.print(plain(f"registered {role}:{name} ({public_key}) at seq {seq}"))

    _run(go)


@keys_app.command("revoke")
def keys_revoke(
    kid: Annotated[str, typer.Argument(help="The kid to revoke")],
    data_dir: DataDirOpt = None,
    nats_url: NatsOpt = None,
) -> None:
    """Revoke a key: signatures by it stop counting from this point of the log on."""
    home = _home(data_dir)

    async def go() -> None:
        async with _bus(home, nats_url) as bus:
            state = await RegistryFollower(bus).refresh()
            entry = state.keyring.entry(kid)
            if entry is None:
                raise SymbioteError("no such key in the registry (see `symbiote keys list --json`)", kid=kid)
            if entry.revoked_seq is not None:
                raise SymbioteError(f"{entry.principal}'s key was already revoked, at seq {entry.revoked_seq}", kid=kid)
            seq = await revoke_key(bus, home.load_key("owner"), kid, entry.principal)
        console.print(plain(f"revoked {entry.principal} ({kid}) at seq {seq}"))

    _run(go)


# -- commands ---------------------------------------------------------------------------------
@commands_app.command("list")
def commands_list(data_dir: DataDirOpt = None, nats_url: NatsOpt = None, as_json: JsonOpt = False) -> None:
    """Registered commands with their executor and approval policy."""
    home = _home(data_dir)

    async def go() -> None:
        async with _bus(home, nats_url) as bus:
            state = await RegistryFollower(bus).refresh()
        definitions = state.latest_commands()
        if as_json:
            for d in definitions:
                print(json.dumps(d.to_map()))
            return
        table = Table("name", "executor", "approval", "auto confidence", "description")
        for d in definitions:
            row = (d.name, d.executor, d.approval.describe(), f"{d.auto_confidence:.2f}", d.description)
            table.add_row(*map(cell, row))
        console.print(table)

    _run(go)


@commands_app.command("add")
def commands_add(
    file: Annotated[Path, typer.Argument(help="A TOML command definition", exists=True, dir_okay=False)],
    data_dir: DataDirOpt = None,
    nats_url: NatsOpt = None,
) -> None:
    """Define (or redefine) a command from a TOML file, signed by the owner key."""
    home = _home(data_dir)

    async def go() -> None:
        definition = load_definition(file)
        async with _bus(home, nats_url) as bus:
            state = await RegistryFollower(bus).refresh()
            if state.command_at(definition.name, state.applied_through + 1) == definition:
                console.print(plain(f"{definition.name} is already defined so: nothing was published"))
                return
            seq = await define_command(bus, home.load_key("owner"), definition)
        console.print(plain(f"defined {definition.name} at seq {seq}"))

    _run(go)


def main() -> None:
    """Entry point of the ``symbiote`` script."""
    try:
        app()
    except BrokenPipeError:
        sys.stderr.close()


def _register_subcommands() -> None:
    """Commands that live in their own modules add themselves to ``app``."""
    from symbiote.cli.approvals import register as register_approvals
    from symbiote.cli.history import register as register_history
    from symbiote.cli.pairing import register as register_pairing

    register_approvals(app)
    register_pairing(keys_app)
    register_history(app)


_register_subcommands()
