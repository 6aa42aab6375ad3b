"""Typed bodies of every event type, and the subject each event is published on."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from symbiote.bus.envelope import Envelope
from symbiote.bus.ids import is_event_id
from symbiote.errors import DecodeError
from symbiote.validation import validation_words

__all__ = [
    "BODY_TYPES",
    "DENIAL_REASONS",
    "TERMINAL_TYPES",
    "ApprovalRequested",
    "AuditCheckpoint",
    "Body",
    "CommandApproved",
    "CommandClarify",
    "CommandDefined",
    "CommandDenied",
    "CommandFailed",
    "CommandProposed",
    "CommandRejected",
    "CommandStarted",
    "CommandSucceeded",
    "CommandSuggested",
    "InputSystem",
    "InputText",
    "InputVoice",
    "KeyRegistered",
    "KeyRevoked",
    "PolicySet",
    "body_problem",
    "parse_body",
    "parse_body_of",
    "subject_for",
]

DenialReason = Literal[
    "malformed",
    "bad_signature",
    "unknown_key",
    "revoked_key",
    "wrong_role",
    "unknown_command",
    "invalid_args",
    "expired",
    "duplicate",
    "not_permitted",
    "approval_digest_mismatch",
    "rejected_by_user",
    "outcome_unknown",
]
DENIAL_REASONS: tuple[str, ...] = get_args(DenialReason)
Role = Literal["owner", "user", "agent", "runtime"]


class Body(BaseModel):
    """Base of every event body: strict, immutable, no unknown fields."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")
    TYPE: ClassVar[str]
    SUBJECT: ClassVar[str] = ""  # fixed subject; empty for per-command subjects

    def to_map(self) -> dict[str, Any]:
        """The body as a plain map for the envelope."""
        return self.model_dump(mode="python")


class InputText(Body):
    TYPE = "input.text"
    SUBJECT = "sym.in.text"
    text: str = Field(min_length=1, max_length=8000)


class InputVoice(Body):
    TYPE = "input.voice"
    SUBJECT = "sym.in.voice"
    text: str = Field(max_length=8000)
    audio_ms: int = Field(ge=0)
    model: str = Field(min_length=1, max_length=64)
    language: str = Field(min_length=1, max_length=16)


class InputSystem(Body):
    TYPE = "input.system"
    SUBJECT = "sym.in.system"
    text: str = Field(min_length=1, max_length=8000)
    source: str


class CommandProposed(Body):
    TYPE = "command.proposed"
    command: str = Field(min_length=1, max_length=128)
    args: dict[str, Any]
    confidence: float = Field(ge=0.0, le=1.0)
    expires_at: int = Field(ge=0)


class _Decision(Body):
    command_id: str

    def model_post_init(self, __context: Any) -> None:
        if not is_event_id(self.command_id):
            raise ValueError("command_id is not an event id")


class CommandApproved(_Decision):
    TYPE = "command.approved"
    digest: bytes = Field(min_length=32, max_length=32)


class CommandRejected(_Decision):
    TYPE = "command.rejected"
    digest: bytes = Field(min_length=32, max_length=32)


class ApprovalRequested(_Decision):
    TYPE = "command.approval_requested"
    digest: bytes = Field(min_length=32, max_length=32)
    needs: int = Field(ge=0)
    principals: list[str]
    expires_at: int = Field(ge=0)


class CommandDenied(_Decision):
    TYPE = "command.denied"
    reason: DenialReason
    detail: str


class CommandClarify(_Decision):
    TYPE = "command.clarify"
    question: str
    candidates: list[dict[str, Any]] = []
    related: list[str] = []  # past inputs and outcomes the agent recalled for this request


class CommandSuggested(_Decision):
    """The agent found no registered command for a request and proposes that one be defined."""

    TYPE = "command.suggested"
    request: str
    suggestion: dict[str, Any]
    related: list[str] = []


class CommandStarted(_Decision):
    TYPE = "command.started"
    sandbox: dict[str, Any]


class CommandSucceeded(_Decision):
    TYPE = "command.succeeded"
    exit_code: int
    output: dict[str, Any]
    duration_ms: int = Field(ge=0)


class CommandFailed(_Decision):
    TYPE = "command.failed"
    exit_code: int
    output: dict[str, Any]
    duration_ms: int = Field(ge=0)


class KeyRegistered(Body):
    TYPE = "key.registered"
    SUBJECT = "sym.reg.key"
    kid: str
    principal: str
    role: Role


class KeyRevoked(Body):
    TYPE = "key.revoked"
    SUBJECT = "sym.reg.key"
    kid: str
    principal: str
    role: Role


class CommandDefined(Body):
    TYPE = "command.defined"
    SUBJECT = "sym.reg.command"
    definition: dict[str, Any]


class PolicySet(Body):
    TYPE = "policy.set"
    SUBJECT = "sym.reg.policy"
    command: str
    approval: dict[str, Any]


class AuditCheckpoint(Body):
    TYPE = "audit.checkpoint"
    SUBJECT = "sym.audit.checkpoint"
    first_seq: int = Field(ge=1)
    last_seq: int = Field(ge=0)
    root: bytes = Field(min_length=32, max_length=32)
    prev: bytes | None
    count: int = Field(ge=0)


BODY_TYPES: dict[str, type[Body]] = {
    cls.TYPE: cls
    for cls in (
        InputText,
        InputVoice,
        InputSystem,
        CommandProposed,
        CommandApproved,
        CommandRejected,
        ApprovalRequested,
        CommandDenied,
        CommandClarify,
        CommandSuggested,
        CommandStarted,
        CommandSucceeded,
        CommandFailed,
        KeyRegistered,
        KeyRevoked,
        CommandDefined,
        PolicySet,
        AuditCheckpoint,
    )
}
TERMINAL_TYPES = frozenset({"command.succeeded", "command.failed", "command.denied"})


def parse_body(event: Envelope) -> Body:
    """Validate ``event.body`` against its type's model; raise :class:`DecodeError` if it does not fit."""
    return parse_body_of(event.type, event.body, event.id)


def parse_body_of(type_: str, body: dict[str, Any], event_id: str | None = None) -> Body:
    """:func:`parse_body` of an event given by its type, body and id."""
    cls = BODY_TYPES.get(type_)
    if cls is None:
        raise DecodeError("unknown event type", event_id=event_id, type=type_)
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        words = validation_words(exc, whole="the body")[:300]
        raise DecodeError("event body invalid", event_id=event_id, type=type_, error=words) from exc
    except ValueError as exc:
        raise DecodeError("event body invalid", event_id=event_id, type=type_, error=str(exc)[:300]) from exc


def body_problem(type_: str, body: dict[str, Any], event_id: str | None = None) -> str | None:
    """Why a body does not fit its type, in words (``invalid body: …``); None when it fits."""
    try:
        parse_body_of(type_, body, event_id)
    except DecodeError as exc:
        return f"invalid body: {exc.message}: {exc.fields.get('error', '')}"[:500]
    return None


def subject_for(event: Envelope) -> str:
    """The subject an event goes on: fixed per type, or ``sym.cmd.<command_id>.<phase>``."""
    cls = BODY_TYPES.get(event.type)
    if cls is not None and cls.SUBJECT:
        return cls.SUBJECT
    if not event.type.startswith("command."):
        raise DecodeError("no subject for event type", type=event.type)
    command_id = event.id if event.type == "command.proposed" else event.body.get("command_id")
    if not is_event_id(command_id):
        raise DecodeError("command event without a valid command id", event_id=event.id)
    return f"sym.cmd.{command_id}.{event.type.rsplit('.', 1)[1]}"
