"""The permission rules of DESIGN §2–§4, as pure functions of the registry state and the log.

The dispatcher applies them to decide; the audit applies the same functions to re-check every
decision from the log. Nothing here reads a clock: callers pass ``now_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from symbiote.bus.envelope import Envelope
from symbiote.bus.events import CommandApproved, CommandProposed, CommandRejected, parse_body
from symbiote.errors import DecodeError
from symbiote.registry.definition import ApprovalPolicy, CommandDefinition, validate_args
from symbiote.registry.state import RegistryState
from symbiote.signers.keyring import Verdict

__all__ = [
    "RUNTIME_DECISIONS",
    "ApprovalCheck",
    "CommandLife",
    "Denial",
    "check_approval",
    "check_proposal",
    "decision_problem",
    "eligible_approvers",
    "fold_command",
    "fold_event",
    "runtime_signed",
    "signed_late",
]


@dataclass(frozen=True)
class Denial:
    """Why something is refused: a DESIGN §3 reason code and a sentence for people."""

    reason: str
    detail: str


def check_proposal(
    state: RegistryState, event: Envelope, seq: int, now_ms: int
) -> tuple[CommandDefinition | None, Denial | None]:
    """Judge a ``command.proposed`` event at stream position ``seq``.

    Returns the definition in force (when known) and the denial, or None when the proposal
    may proceed (to execution or to an approval request, as its policy says).
    """
    if event.type != "command.proposed":
        return None, Denial("malformed", f"expected command.proposed, got {event.type}")
    try:
        body = parse_body(event)
    except DecodeError as exc:
        return None, Denial("malformed", f"{exc.message}: {exc.fields.get('error', '')}"[:500])
    assert isinstance(body, CommandProposed)
    verdict = state.keyring.verify(event, seq)
    if not verdict.ok:
        return None, Denial(verdict.reason or "bad_signature", verdict.detail)
    if event.actor_role != "agent" or any(c.role != "agent" for c in verdict.checks):
        return None, Denial("wrong_role", f"proposals must be signed by agent keys, not {event.actor}")
    definition = state.command_at(body.command, seq)
    if definition is None:
        return None, Denial("unknown_command", f"no command named {body.command!r} is registered")
    problem = validate_args(definition, body.args)
    if problem is not None:
        return definition, Denial("invalid_args", problem)
    if body.expires_at <= now_ms:
        return definition, Denial("expired", f"proposal expired at {body.expires_at} (now {now_ms})")
    return definition, None


def eligible_approvers(state: RegistryState, policy: ApprovalPolicy, seq: int) -> list[str]:
    """User principals holding a key valid at ``seq`` who may approve under ``policy``."""
    found = {entry.principal for entry in state.keyring.keys.values() if entry.role == "user" and entry.valid_at(seq)}
    if policy.principals:
        found &= set(policy.principals)
    return sorted(found)


@dataclass(frozen=True)
class ApprovalCheck:
    """A user's signed answer that counts: who, and whether they approved or rejected."""

    principal: str
    approve: bool


def check_approval(
    state: RegistryState,
    proposal: Envelope,
    definition: CommandDefinition,
    event: Envelope,
    seq: int,
) -> ApprovalCheck | Denial:
    """Judge one ``command.approved`` / ``command.rejected`` at ``seq`` against its proposal."""
    try:
        body = parse_body(event)
    except DecodeError as exc:
        return Denial("malformed", exc.message)
    if not isinstance(body, (CommandApproved, CommandRejected)):
        return Denial("malformed", f"{event.type} is not an approval")
    verdict = state.keyring.verify(event, seq)
    if not verdict.ok:
        return Denial(verdict.reason or "bad_signature", verdict.detail)
    if event.actor_role != "user" or any(c.role != "user" for c in verdict.checks):
        return Denial("wrong_role", f"approvals must be signed by user keys, not {event.actor}")
    if body.digest != proposal.digest():
        return Denial("approval_digest_mismatch", "the signed digest is not the digest of the proposed command")
    policy = definition.approval
    if policy.mode != "user":
        return Denial("not_permitted", "this command takes no approvals")
    if policy.principals and event.actor not in policy.principals:
        return Denial("not_permitted", f"{event.actor} is not among {policy.principals}")
    return ApprovalCheck(event.actor, isinstance(body, CommandApproved))


@dataclass
class CommandLife:
    """One command's history folded from its events (``sym.cmd.<id>.>``), in log order."""

    command_id: str
    proposal: Envelope | None = None
    proposal_seq: int = 0
    definition: CommandDefinition | None = None
    requested_at_seq: int = 0
    approval_expires_at: int | None = None
    approvals: dict[str, int] = field(default_factory=dict)  # principal -> seq of their approval
    approval_ids: set[str] = field(default_factory=set)
    rejected_by: str | None = None
    started_seq: int = 0
    starts: int = 0
    terminal: Envelope | None = None
    terminal_seq: int = 0
    last_seq: int = 0
    events: list[tuple[int, Envelope]] = field(default_factory=list)

    @property
    def decided(self) -> bool:
        """A terminal event ended it, or execution has started."""
        return self.terminal is not None or self.started_seq > 0

    @property
    def pending_approval(self) -> bool:
        return self.requested_at_seq > 0 and not self.decided

    def quorum_met(self) -> bool:
        if self.definition is None:
            return False
        return len(self.approvals) >= self.definition.approval.quorum

    @property
    def reply(self) -> str | None:
        """What the agent made of the request instead of a command (``command.clarify``: it asked
        back; ``command.suggested``: no command fits); None when a command was proposed or ended."""
        if self.proposal is not None or self.terminal is not None:
            return None
        kinds = {event.type for _, event in self.events}
        return next((kind for kind in ("command.clarify", "command.suggested") if kind in kinds), None)

    def summary(self) -> dict[str, Any]:
        state = "proposed"
        if self.terminal is not None:
            state = self.terminal.type.rsplit(".", 1)[1]
        elif self.started_seq:
            state = "started"
        elif self.requested_at_seq:
            state = "awaiting_approval"
        return {"command_id": self.command_id, "state": state, "approvals": sorted(self.approvals)}


RUNTIME_DECISIONS = frozenset(
    {"command.approval_requested", "command.started", "command.succeeded", "command.failed", "command.denied"}
)


def _by_runtime(state: RegistryState, event: Envelope, seq: int) -> bool:
    """True if ``event`` is signed, as its actor, only by runtime keys valid at ``seq``."""
    verdict = state.keyring.verify(event, seq)
    return verdict.ok and runtime_signed(event, verdict)


def runtime_signed(event: Envelope, verdict: Verdict) -> bool:
    """Whether ``event``, whose signatures gave ``verdict``, claims to be the runtime's and only
    runtime keys signed it (whether those signatures hold is ``verdict.ok``'s to say)."""
    return event.actor_role == "runtime" and all(check.role == "runtime" for check in verdict.checks)


def decision_problem(state: RegistryState, command_id: str, event: Envelope, seq: int) -> str | None:
    """Why a runtime decision (request, start, outcome, denial) found among ``command_id``'s events
    does not count for it, in words; None when it counts (signed by the runtime alone, as its
    actor, and about this very command)."""
    named = event.body.get("command_id")
    if named != command_id:
        return f"a copy of a decision about command {named}"
    if not _by_runtime(state, event, seq):
        verdict = state.keyring.verify(event, seq)
        if not verdict.ok:
            return f"its signature does not hold ({verdict.reason})"
        return f"signed by {', '.join(verdict.principals) or 'nobody'}, not by the runtime"
    return None


def signed_late(life: CommandLife, event: Envelope) -> bool:
    """An approval or rejection signed after the approval request expired (it never counts)."""
    expires = life.approval_expires_at
    return expires is not None and event.at > expires


def fold_command(command_id: str, events: list[tuple[int, Envelope]], state: RegistryState) -> CommandLife:
    """Fold a command's events (see :func:`fold_event`)."""
    life = CommandLife(command_id)
    for seq, event in events:
        fold_event(life, seq, event, state)
    return life


def fold_event(life: CommandLife, seq: int, event: Envelope, state: RegistryState) -> None:
    """Fold the command's next event (in log order) into ``life``.

    Approvals count only if :func:`check_approval` accepts them and they came after the approval
    request and before the command was decided, and were signed before the request expired;
    decisions (request, start, outcome, denial) count only if the runtime signed them. Every
    event but the proposal counts only if its body names this command: a validly signed event of
    another command, copied onto this command's subjects, changes nothing. Every
    rule is judged at the event's own position, so folding event by event as the log grows gives
    the same life as folding the whole history at once.
    """
    command_id = life.command_id
    life.events.append((seq, event))
    life.last_seq = max(life.last_seq, seq)
    kind = event.type
    if kind != "command.proposed" and event.body.get("command_id") != command_id:
        return  # about another command (a signed event copied onto this one's subject): not this one's
    if kind in RUNTIME_DECISIONS and not _by_runtime(state, event, seq):
        return  # only the runtime decides: a forged decision changes nothing
    if kind == "command.proposed":
        if life.proposal is None and event.id == command_id:
            life.proposal, life.proposal_seq = event, seq
            life.definition = state.command_at(str(event.body.get("command")), seq)
    elif kind == "command.approval_requested":
        if not life.requested_at_seq:
            life.requested_at_seq = seq
            expires = event.body.get("expires_at")
            life.approval_expires_at = expires if isinstance(expires, int) else None
    elif kind in ("command.approved", "command.rejected"):
        if life.proposal is None or life.definition is None or not life.requested_at_seq or life.decided:
            return
        if event.id in life.approval_ids or signed_late(life, event):
            return
        check = check_approval(state, life.proposal, life.definition, event, seq)
        if isinstance(check, Denial):
            return
        life.approval_ids.add(event.id)
        if check.approve:
            life.approvals.setdefault(check.principal, seq)
        elif life.rejected_by is None:
            life.rejected_by = check.principal
    elif kind == "command.started":
        life.started_seq = seq
        life.starts += 1
    elif kind in ("command.succeeded", "command.failed") or (
        kind == "command.denied" and event.cause == command_id and life.terminal is None
    ):
        life.terminal, life.terminal_seq = event, seq
