"""``symbiote replay``, ``symbiote audit`` and ``symbiote why``: the log's history, checked.

``register(app)`` adds the three commands to the main typer app.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from symbiote.cli.common import (
    DataDirOpt,
    JsonOpt,
    NatsOpt,
    _bus,
    _home,
    _run,
    cell,
    command_id_arg,
    console,
    err,
    plain,
)
from symbiote.errors import ConfigError, KeyFileError
from symbiote.home import DataDir
from symbiote.projections.audit import AuditReport, Finding, audit, human_time, why, write_html
from symbiote.projections.replay import ReplayReport, drop_replay, replay

__all__ = ["register"]

PostgresOpt = Annotated[
    str | None,
    typer.Option("--postgres-dsn", help="PostgreSQL DSN (default: the running runtime's)"),
]


def _dsn(home: DataDir, postgres_dsn: str | None) -> str:
    runtime = home.read_runtime()
    dsn = postgres_dsn or (runtime or {}).get("postgres_dsn")
    if not dsn:
        why = "the running runtime has none (started with --no-postgres)" if runtime else "the runtime is not up"
        raise ConfigError(
            f"PostgreSQL is not known: {why}; start `symbiote up` with it, or pass --postgres-dsn",
            data_dir=str(home.root),
        )
    return str(dsn)


def replay_command(
    from_seq: Annotated[int, typer.Option("--from", help="First stream sequence to rebuild from")] = 1,
    into: Annotated[
        str | None, typer.Option("--into", help="Schema to build into (kept); default: a temporary one")
    ] = None,
    drop: Annotated[
        str | None, typer.Option("--drop", help="Drop a schema an earlier `replay --into` kept, and nothing else")
    ] = None,
    data_dir: DataDirOpt = None,
    nats_url: NatsOpt = None,
    postgres_dsn: PostgresOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild every projection from the log into a fresh schema and prove it equal to the live one."""
    home = _home(data_dir)
    if drop is not None:

        async def dropping() -> None:
            await drop_replay(_dsn(home, postgres_dsn), drop)

        _run(dropping)
        console.print(f"dropped schema {plain(drop)}")
        return

    async def go() -> ReplayReport:
        dsn = _dsn(home, postgres_dsn)
        async with _bus(home, nats_url) as bus:
            return await replay(bus, dsn, into=into, from_seq=from_seq, progress=not as_json, console=err)

    report = _run(go)
    if as_json:
        print(json.dumps(report.as_map()), flush=True)
    else:
        table = Table("table", "rows (replay)", "rows (live)", "digest (replay)", "equal")
        for name, digest in report.digests.items():
            live = report.live.get(name)
            same = "—" if not report.compared else ("[green]yes[/green]" if live == digest else "[red]NO[/red]")
            table.add_row(name, str(digest.rows), str(live.rows) if live else "—", digest.digest[:16], same)
        console.print(table)
        where = f"schema {report.schema}" + (" (kept)" if report.kept else " (dropped)")
        console.print(
            f"replayed {report.events} events through seq {report.through_seq} into {where} "
            f"in {report.seconds:.1f}s ({report.per_s:,.0f} events/s)"
        )
        if report.note:
            console.print(f"[yellow]{plain(report.note)}[/yellow]")
        if report.ok:
            console.print("[green]the replay equals the live projections[/green]")
        elif report.mismatches:
            console.print(f"[red]mismatch in: {', '.join(report.mismatches)}[/red]")
            console.print(
                "the live tables differ from what the log says: `symbiote audit` tells whether the log was altered"
            )
    if not report.ok:
        raise typer.Exit(1)


def audit_command(
    html: Annotated[Path | None, typer.Option("--html", help="Also write a report for people to FILE")] = None,
    grace: Annotated[
        float,
        typer.Option("--grace", min=0, help="Seconds an event may wait for a signed checkpoint before that fails"),
    ] = 60.0,
    data_dir: DataDirOpt = None,
    nats_url: NatsOpt = None,
    postgres_dsn: PostgresOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-verify every signature, policy decision and checkpoint of the log; exit 1 if anything fails.

    The checkpoints are compared with their files, and with their copies in PostgreSQL when it is
    known (--postgres-dsn, or the running runtime's)."""
    home = _home(data_dir)

    skipped = ""
    try:  # the log must be this installation's: its first owner key is this data dir's owner key
        owner_kid: str | None = home.kid("owner")
    except (ConfigError, KeyFileError) as exc:  # no owner key here, or an old encrypted file and no passphrase
        owner_kid = None
        skipped = f"the log's owner was not compared with this installation's: {exc.message}"

    async def go() -> AuditReport:
        async with _bus(home, nats_url, start_if_down=True) as bus:
            return await audit(
                bus,
                checkpoint_dir=home.checkpoints_dir,
                uncovered_grace_s=grace,
                owner_kid=owner_kid,
                checkpoint_dsn=postgres_dsn or (home.read_runtime() or {}).get("postgres_dsn"),
            )

    report = _run(go)
    if skipped:
        report.findings.append(Finding(None, "warn", "owner", skipped))
    if as_json:
        print(json.dumps(report.as_map()), flush=True)
    else:
        _print_audit(report)
    if html is not None:  # after the verdict, which stands whether or not the page can be written
        try:
            write_html(report, html)
        except OSError as exc:
            err.print(f"[red]error:[/red] cannot write the report to {plain(html)}: {plain(exc.strerror or exc)}")
            raise typer.Exit(1) from exc
        if not as_json:
            console.print(f"report written to {plain(html)}")
    if not report.ok:
        raise typer.Exit(1)


def _print_audit(report: AuditReport) -> None:
    rows = report.checkpoint_rows
    database = "PostgreSQL not consulted" if rows is None else f"{rows} rows in PostgreSQL"
    console.print(
        f"{report.messages} events (seq {report.stream_first_seq}–{report.stream_last_seq}), "
        f"{report.signatures_checked} signatures, {report.commands_executed} executions, "
        f"{report.checkpoints} checkpoints ({report.checkpoint_files} files, {database}), covered through seq "
        f"{report.covered_through}"
    )
    if report.findings:
        table = Table("seq", "what", "kind", "finding")
        for finding in report.findings:
            # a failure is a problem; a warning is a note (as the summary and the HTML report say)
            colour, word = ("red", "problem") if finding.severity == "fail" else ("yellow", "note")
            table.add_row(
                str(finding.seq) if finding.seq is not None else "—",
                f"[{colour}]{word}[/{colour}]",
                cell(finding.kind),
                cell(finding.message),
            )
        console.print(table)
        for kind, count in report.omitted.items():
            console.print(f"… and {count} more {kind} finding(s)")
    colour = "green" if report.ok else "red"
    console.print(f"[{colour}]{plain(report.summary())}[/{colour}]")


def why_command(
    command_id: Annotated[
        str, typer.Argument(help="A command id (the id of its proposal), or the id of the request that led to it")
    ],
    data_dir: DataDirOpt = None,
    nats_url: NatsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Why a command did what it did: input → proposal → approvals → execution → result."""
    home = _home(data_dir)
    command_id = command_id_arg(command_id)

    async def go() -> None:
        async with _bus(home, nats_url, start_if_down=True) as bus:
            story = await why(bus, command_id)
        if as_json:
            print(json.dumps(story.as_map(), ensure_ascii=False), flush=True)
            if not story.found:
                raise typer.Exit(1)
            return
        if not story.found:
            console.print(f"[red]{plain(story.not_found_words())}[/red]", soft_wrap=True)
            raise typer.Exit(1)
        command, state = plain(story.command or "no command"), plain(story.state)
        if story.request_id is not None:
            console.print(f"[dim]the request {plain(story.request_id)} led to:[/dim]")
        console.print(f"[bold]{command}[/bold]  {plain(story.command_id)}  → [bold]{state}[/bold]")
        for step in story.steps:
            mark = "[green]✓[/green]" if step.ok else "[red]✗[/red]"
            where = f"#{step.seq}" if step.seq is not None else ""
            kind = plain(f"{step.kind:<16}")
            console.print(f"  {mark} {where:>7}  {human_time(step.at)}  [dim]{kind}[/dim] {plain(step.text)}")
        if not story.chain_ok:
            console.print("[red]the steps marked ✗ do not hold: the chain cannot be proven there[/red]")
        if story.problems:
            console.print("[red]not allowed by the policy in force:[/red]")
            for problem in story.problems:
                console.print(f"  [red]✗[/red] {plain(problem)}")
        elif story.ran:
            console.print(f"[green]{story.verdict()}[/green]")
        else:
            console.print(story.verdict(), soft_wrap=True)

    _run(go)


def register(app: typer.Typer) -> None:
    """Add ``replay``, ``audit`` and ``why`` to ``app``."""
    app.command("replay")(replay_command)
    app.command("audit")(audit_command)
    app.command("why")(why_command)
