"""``symbiote approvals``, ``approve ID`` and ``reject ID``: the terminal side of approvals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from symbiote.bus.envelope import Envelope, make_event
from symbiote.bus.ids import now_ms
from symbiote.bus.stream import Bus
from symbiote.cli.chain import follow_chain, wait_status
from symbiote.cli.common import (
    DataDirOpt,
    JsonOpt,
    NatsOpt,
    _bus,
    _home,
    _run,
    command_id_arg,
    console,
    emit_chain,
    plain,
)
from symbiote.errors import SymbioteError
from symbiote.home import DataDir
from symbiote.projections.audit import find_verified_input, human_time
from symbiote.projections.jsontext import jsonable
from symbiote.registry.commands import load_life, pending_approvals
from symbiote.registry.follower import RegistryFollower
from symbiote.registry.policy import CommandLife
from symbiote.signers.keys import SigningKey, sign_event

__all__ = ["describe_pending", "register", "sign_answer"]

KeyOpt = Annotated[Path | None, typer.Option("--key", help="User key file (default: the data dir's user key)")]


def describe_pending(life: CommandLife) -> dict[str, Any]:
    """What a pending command will do, in fields a person (or the phone page) can show."""
    assert life.proposal is not None
    definition = life.definition
    sandbox = definition.sandbox if definition else None
    return {
        "command_id": life.command_id,
        "command": life.proposal.body.get("command"),
        "args": jsonable(life.proposal.body.get("args")),
        "confidence": life.proposal.body.get("confidence"),
        "proposed_by": life.proposal.actor,
        "risk": definition.risk if definition else "unknown",
        "policy": definition.approval.describe() if definition else "",
        "sandbox": {
            "network": "none" if sandbox is None or sandbox.network is None else ", ".join(sandbox.network),
            "cpu_seconds": sandbox.cpu_seconds if sandbox else None,
            "memory_mb": sandbox.memory_mb if sandbox else None,
            "timeout_s": sandbox.timeout_s if sandbox else None,
        },
        "needs": definition.approval.quorum if definition else None,
        "signed_by": sorted(life.approvals),
        "expires_at": life.approval_expires_at,
        "digest": life.proposal.digest().hex(),
    }


def sign_answer(proposal: Envelope, key: SigningKey, *, approve: bool) -> Envelope:
    """A signed ``command.approved`` / ``command.rejected`` over the proposal's digest."""
    kind = "command.approved" if approve else "command.rejected"
    body = {"command_id": proposal.id, "digest": proposal.digest()}
    return sign_event(make_event(kind, key.principal, body, corr=proposal.corr, cause=proposal.id), key)


def approvals(data_dir: DataDirOpt = None, nats_url: NatsOpt = None, as_json: JsonOpt = False) -> None:
    """Commands waiting for approval: what each will do, its sandbox, who has signed."""
    home = _home(data_dir)

    async def go() -> None:
        async with _bus(home, nats_url) as bus:
            found = []
            follower = RegistryFollower(bus)
            for life in await pending_approvals(bus, follower, now_ms=now_ms()):
                item = describe_pending(life)
                item.update(await _asked(bus, follower, life))
                found.append(item)
        if as_json:
            for item in found:
                print(json.dumps(item), flush=True)
            return
        if not found:
            console.print("No command is waiting for approval.")
            return
        # one block per command, never a table: at any terminal width nothing is cut off, and the
        # id stays on one line to be copied
        for item in found:
            box = item["sandbox"]
            signed = f"{', '.join(item['signed_by']) or 'nobody yet'} (needs {item['needs']})"
            sandbox = f"network {box['network']}, {box['memory_mb']} MB, {box['timeout_s']} s"
            console.print(f"[bold]{plain(item['command_id'])}[/bold]", soft_wrap=True)
            if item["asked_by"] is not None:
                console.print(plain(f"  asked by {item['asked_by']}: {item['request_text']!r}"), soft_wrap=True)
            elif item["request_problem"] is not None:
                console.print(f"  [red]{plain(item['request_problem'])}[/red]", soft_wrap=True)
            console.print(plain(f"  {item['command']} {json.dumps(item['args'], ensure_ascii=False)}"))
            console.print(plain(f"  risk: {item['risk']}"))
            console.print(plain(f"  who: {item['policy']}"))
            console.print(plain(f"  sandbox: {sandbox}   signed: {signed}"))
            console.print(plain(f"  open until: {human_time(item['expires_at'])}"))
            console.print(f"  [dim]approve: symbiote approve {plain(item['command_id'])}[/dim]", soft_wrap=True)

    _run(go)


async def _asked(bus: Bus, follower: RegistryFollower, life: CommandLife) -> dict[str, Any]:
    """Who asked for this command, and in what words: only from a request whose signatures
    verify (as the registry stood where it lies); otherwise what is wrong with it."""
    cause = life.proposal.cause if life.proposal is not None else None
    asked = await find_verified_input(bus, cause, life.proposal_seq, follower) if cause else None
    if asked is None:
        problem = f"the request it answers ({cause}) is not in the log" if cause else None
        return {"asked_by": None, "request_text": None, "request_problem": problem}
    seq, request, verdict = asked
    if not verdict.ok:
        problem = f"the request at seq {seq} could not be verified ({verdict.reason}): who asked is unknown"
        return {"asked_by": None, "request_text": None, "request_problem": problem}
    text = request.body.get("text")
    return {"asked_by": request.actor, "request_text": text if isinstance(text, str) else None, "request_problem": None}


async def _answer(bus: Bus, home: DataDir, command_id: str, key_file: Path | None, *, approve: bool) -> Envelope:
    key = SigningKey.load(key_file, DataDir.passphrase()) if key_file else home.load_key("user")
    if not key.principal.startswith("user:"):
        raise SymbioteError("approvals are signed with a user key", principal=key.principal)
    life = await load_life(bus, RegistryFollower(bus), command_id)
    if life.proposal is None:
        raise SymbioteError("no command has this id (see `symbiote approvals`)", command_id=command_id)
    if not life.pending_approval:
        raise SymbioteError(
            "this command is not waiting for approval", command_id=command_id, state=life.summary()["state"]
        )
    event = sign_answer(life.proposal, key, approve=approve)
    await bus.publish(event)
    return event


def _answer_command(
    command_id: str,
    key_file: Path | None,
    data_dir: Path | None,
    nats_url: str | None,
    wait: bool,
    as_json: bool,
    *,
    approve: bool,
) -> None:
    home = _home(data_dir)
    command_id = command_id_arg(command_id)

    async def go() -> int:
        async with _bus(home, nats_url) as bus:
            event = await _answer(bus, home, command_id, key_file, approve=approve)
            console.print(plain(f"{event.type} by {event.actor} ({event.id})"))
            if not wait:
                return 0
            life = await load_life(bus, RegistryFollower(bus), command_id)
            corr = life.proposal.corr if life.proposal else None
            chain = follow_chain(bus, corr or command_id, life.last_seq, timeout_s=30, until_approval=True)
            last = await emit_chain(chain, as_json)
            if not approve and last is not None and last.event is not None and last.event.type == "command.denied":
                return 0  # rejected, as asked
            return wait_status(last)

    status = _run(go)
    if status:
        raise typer.Exit(status)


def approve(
    command_id: Annotated[str, typer.Argument(help="The command id (see `symbiote approvals`)")],
    key: KeyOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Print what happens next")] = False,
    data_dir: DataDirOpt = None,
    nats_url: NatsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Sign an approval of exactly this command (its digest) with a user key."""
    _answer_command(command_id, key, data_dir, nats_url, wait, as_json, approve=True)


def reject(
    command_id: Annotated[str, typer.Argument(help="The command id (see `symbiote approvals`)")],
    key: KeyOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Print what happens next")] = False,
    data_dir: DataDirOpt = None,
    nats_url: NatsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Sign a rejection of this command with a user key; it will not run."""
    _answer_command(command_id, key, data_dir, nats_url, wait, as_json, approve=False)


def register(app: typer.Typer) -> None:
    """Add ``approvals``, ``approve`` and ``reject`` to the ``symbiote`` command."""
    app.command()(approvals)
    app.command()(approve)
    app.command()(reject)
