"""What the API shows: pending approvals and command states, described in plain words."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from symbiote.api.wire import b64encode, jsonable
from symbiote.bus.envelope import Envelope
from symbiote.registry.definition import CommandDefinition, SandboxSpec
from symbiote.registry.policy import CommandLife

__all__ = [
    "CommandView",
    "PendingApproval",
    "describe_risk",
    "describe_sandbox",
    "pending_from_life",
    "view_of",
]

_RISK_LEVELS = ("none", "low", "medium", "high", "critical")


class PendingApproval(BaseModel):
    """A command waiting for user signatures: what it does, how risky it is, who may and did sign.

    ``proposal_wire`` is the proposal event's canonical wire bytes (base64): the page decodes
    them, shows what they say and recomputes ``digest`` itself before it signs anything.
    """

    model_config = ConfigDict(frozen=True)
    command_id: str = Field(description="id of the command.proposed event")
    command: str = Field(description="registered command name, e.g. shell.run")
    description: str = Field("", description="what the command does, from its definition")
    args: dict[str, Any] = Field(description="arguments as proposed (bin values as {'$bin': base64})")
    request_text: str | None = Field(None, description="the typed or spoken request that led to it, if known")
    proposed_by: str
    confidence: float | None = None
    risk_level: str = Field(description="none, low, medium, high (or what the definition says)")
    risk: str = Field(description="the risk in plain words")
    sandbox: str = Field(description="where and under which limits it runs, in plain words")
    sandbox_profile: dict[str, Any] = Field(default_factory=dict, description="the definition's sandbox settings")
    policy: str = Field(description="the approval policy in plain words")
    needs: int = Field(description="how many distinct users must approve")
    principals: list[str] = Field(description="who may sign")
    signed_by: list[str] = Field(description="who has approved so far")
    digest: str = Field(description="SHA-256 of the proposal's signing input, hex: what an approval signs")
    proposal_wire: str = Field(description="the proposal event as canonical msgpack, base64")
    corr: str | None = None
    requested_at: int = Field(0, description="when approval was requested (ms since the epoch)")
    expires_at: int = Field(0, description="when the request expires (ms since the epoch)")
    proposal_seq: int = 0


class CommandView(BaseModel):
    """One command's state as folded from its events."""

    model_config = ConfigDict(frozen=True)
    command_id: str
    command: str | None = None
    args: dict[str, Any] | None = None
    state: str = Field(
        description="proposed, awaiting_approval, started, succeeded, failed or denied; for what the agent "
        "made of a request without proposing a command: asked_back or suggested"
    )
    proposed_by: str | None = None
    at: int | None = Field(None, description="when it was proposed (ms since the epoch)")
    corr: str | None = None
    approvals: list[str] = Field(default_factory=list)
    rejected_by: str | None = None
    exit_code: int | None = None
    output: str | None = Field(None, description="a short excerpt of the output, or the denial's detail")
    reason: str | None = Field(None, description="denial reason code, for denied commands")
    last_seq: int = 0


def describe_risk(definition: CommandDefinition | None) -> tuple[str, str]:
    """``(level, sentence)`` from a definition's ``risk`` text such as ``"high: runs any program"``."""
    if definition is None:
        return "unknown", "Unknown risk: the command is not registered."
    text = definition.risk.strip()
    level, sep, rest = text.partition(":")
    level = level.strip().lower()
    if not sep or level not in _RISK_LEVELS:
        return "unknown", text or "No risk description."
    rest = rest.strip()
    label = "No risk" if level == "none" else f"{level.capitalize()} risk"
    return level, f"{label}: {rest}" if rest else label


def describe_sandbox(definition: CommandDefinition | None) -> str:
    """Where and under which limits a command runs, in a sentence or two."""
    if definition is None:
        return "Unknown."
    executor = definition.executor
    if executor.startswith("builtin:") or executor == "noop":
        return "Runs inside symbiote itself: no program is started and nothing else on the computer is touched."
    spec: SandboxSpec = definition.sandbox
    parts = ["Runs in a sandbox"]
    if not spec.network:
        parts.append("with no network access")
    else:
        parts.append("with network access only to " + ", ".join(spec.network))
    parts.append("a read-only view of the system, and writes only in its own workspace folder")
    sentence = parts[0] + " " + parts[1] + ", " + parts[2] + "."
    limits = (
        f"Limits: {spec.memory_mb} MB of memory, {spec.cpu_seconds} s of CPU time, stopped after {spec.timeout_s:g} s."
    )
    extra = []
    if spec.gpu:
        extra.append("It may use the GPU.")
    if spec.snapshot:
        extra.append("The workspace is snapshotted first, so its changes can be rolled back.")
    return " ".join([sentence, limits, *extra])


def _args_of(event: Envelope) -> dict[str, Any]:
    args = event.body.get("args")
    return jsonable(args) if isinstance(args, dict) else {}


def pending_from_life(life: CommandLife, request_text: str | None = None) -> PendingApproval | None:
    """The approval view of a command awaiting approval (None if it is not awaiting one)."""
    proposal = life.proposal
    if proposal is None or not life.pending_approval or life.rejected_by:
        return None
    definition = life.definition
    level, risk = describe_risk(definition)
    requested = next((e for s, e in life.events if s == life.requested_at_seq), None)
    body = requested.body if requested is not None else {}
    principals = body.get("principals")
    needs = body.get("needs")
    confidence = proposal.body.get("confidence")
    return PendingApproval(
        command_id=life.command_id,
        command=str(proposal.body.get("command", "")),
        description=definition.description if definition else "",
        args=_args_of(proposal),
        request_text=request_text,
        proposed_by=proposal.actor,
        confidence=float(confidence) if isinstance(confidence, (int, float)) else None,
        risk_level=level,
        risk=risk,
        sandbox=describe_sandbox(definition),
        sandbox_profile=definition.sandbox.model_dump(mode="json") if definition else {},
        policy=definition.approval.describe() if definition else "",
        needs=needs if isinstance(needs, int) else (definition.approval.quorum if definition else 1),
        principals=[str(p) for p in principals] if isinstance(principals, list) else [],
        signed_by=sorted(life.approvals),
        digest=proposal.digest().hex(),
        proposal_wire=b64encode(proposal.to_wire()),
        corr=proposal.corr,
        requested_at=requested.at if requested is not None else 0,
        expires_at=life.approval_expires_at or 0,
        proposal_seq=life.proposal_seq,
    )


def _excerpt(body: dict[str, Any]) -> str | None:
    output = body.get("output")
    if isinstance(output, dict):
        for key in ("stdout", "text", "error", "stderr"):
            value = output.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()[:500]
        return None
    detail = body.get("detail")
    return str(detail)[:500] if detail is not None else None


def view_of(life: CommandLife) -> CommandView:
    """The folded state of one command."""
    proposal = life.proposal
    terminal = life.terminal
    replies = {"command.clarify": "asked_back", "command.suggested": "suggested"}  # no command was proposed
    state = replies[life.reply] if life.reply else str(life.summary()["state"])
    body = terminal.body if terminal is not None else {}
    exit_code = body.get("exit_code")
    reason = body.get("reason") if terminal is not None and terminal.type == "command.denied" else None
    return CommandView(
        command_id=life.command_id,
        command=str(proposal.body.get("command")) if proposal else None,
        args=_args_of(proposal) if proposal else None,
        state=state,
        proposed_by=proposal.actor if proposal else None,
        at=proposal.at if proposal else None,
        corr=proposal.corr if proposal else None,
        approvals=sorted(life.approvals),
        rejected_by=life.rejected_by,
        exit_code=exit_code if isinstance(exit_code, int) else None,
        output=_excerpt(body) if terminal is not None else None,
        reason=str(reason) if reason is not None else None,
        last_seq=life.last_seq,
    )
