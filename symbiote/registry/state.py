"""Registry state folded from ``sym.reg.*``: keys, command definitions and policy, by log position.

Every lookup takes the stream sequence of the event being judged, so a command is judged by
the definition and policy in force at its position in the log, and a key counts only if it
was registered (and not revoked) before that position.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import ValidationError

from symbiote.bus.envelope import Envelope
from symbiote.bus.events import CommandDefined, PolicySet, parse_body
from symbiote.errors import ConfigError, DecodeError
from symbiote.registry.definition import ApprovalPolicy, CommandDefinition, load_definition
from symbiote.signers.keyring import Keyring, Verdict
from symbiote.signers.keys import verify_sig

__all__ = ["REGISTRY_TYPES", "RegistryState", "default_definitions", "is_registry_change"]

T = TypeVar("T")

REGISTRY_TYPES = frozenset({"key.registered", "key.revoked", "command.defined", "policy.set"})


def is_registry_change(subject: str, event_type: str) -> bool:
    """Whether every reader of the registry folds an event of ``event_type`` lying on ``subject``:
    a registry type on a ``sym.reg.…`` subject (elsewhere, none of them reads it)."""
    return subject.startswith("sym.reg.") and event_type in REGISTRY_TYPES


@dataclass
class _History(Generic[T]):
    """Values of one name over log positions; ``at(seq)`` is the last one set strictly before ``seq``."""

    seqs: list[int] = field(default_factory=list)
    values: list[T] = field(default_factory=list)

    def set(self, seq: int, value: T) -> None:
        index = bisect.bisect_right(self.seqs, seq)
        self.seqs.insert(index, seq)
        self.values.insert(index, value)

    def entry_at(self, seq: int) -> tuple[int, T] | None:
        index = bisect.bisect_left(self.seqs, seq)
        return (self.seqs[index - 1], self.values[index - 1]) if index else None

    def at(self, seq: int) -> T | None:
        entry = self.entry_at(seq)
        return entry[1] if entry else None


@dataclass
class RegistryState:
    """Keys, commands and policy as folded from the registry subjects."""

    keyring: Keyring = field(default_factory=Keyring)
    commands: dict[str, _History[CommandDefinition]] = field(default_factory=dict)
    policies: dict[str, _History[ApprovalPolicy]] = field(default_factory=dict)
    applied_through: int = 0
    rejected: int = 0
    # registry event id -> (where, signing kids) of each event under it whose signatures hold
    seen: dict[str, list[tuple[int, frozenset[str]]]] = field(default_factory=dict)

    def apply(self, event: Envelope, seq: int) -> Verdict:
        """Fold one registry event at ``seq``. Returns its verdict; a failed one changes nothing.

        An event is folded once: a copy of it published again later (an old, validly signed
        ``command.defined`` that would undo every policy set since) is refused, whether the first
        was applied or refused. An event under an id seen before counts as a copy when a key
        signed both: a forgery published first under a registry event's id (signed by a key of
        the forger's, or not at all) does not keep the real one out.
        """
        self.applied_through = max(self.applied_through, seq)
        kids = frozenset(s.kid for s in event.sigs)
        first = next((where for where, signers in self.seen.get(event.id, ()) if signers & kids and where != seq), None)
        if first is not None:
            self.rejected += 1
            return Verdict((), "malformed", f"replayed: event {event.id} appeared before, at seq {first}")
        if event.type in ("key.registered", "key.revoked"):
            verdict = self.keyring.apply(event, seq)
        else:
            verdict = self._apply_definition(event, seq)
        if verdict.ok or (kids and all(verify_sig(s.kid, s.sig, event.signing_input()) for s in event.sigs)):
            held = self.seen.setdefault(event.id, [])
            if all(where != seq for where, _ in held):
                held.append((seq, kids))
        if not verdict.ok:
            self.rejected += 1
        return verdict

    def _apply_definition(self, event: Envelope, seq: int) -> Verdict:
        try:
            body = parse_body(event)
        except DecodeError as exc:
            return Verdict((), "malformed", exc.message)
        verdict = self.keyring.verify(event, seq)
        if not verdict.ok:
            return verdict
        if "owner" not in {c.role for c in verdict.checks}:
            return Verdict(verdict.checks, "wrong_role", "registry changes must be signed by an owner key")
        try:
            if isinstance(body, CommandDefined):
                definition = CommandDefinition.model_validate(body.definition)
                self.commands.setdefault(definition.name, _History()).set(seq, definition)
            elif isinstance(body, PolicySet):
                policy = ApprovalPolicy.model_validate(body.approval)
                self.policies.setdefault(body.command, _History()).set(seq, policy)
            else:
                return Verdict(verdict.checks, "malformed", f"{event.type} is not a registry event")
        except ValidationError as exc:
            return Verdict(verdict.checks, "malformed", str(exc)[:300])
        return verdict

    def command_at(self, name: str, seq: int) -> CommandDefinition | None:
        """The definition of ``name`` in force at ``seq``, with the policy in force then."""
        history = self.commands.get(name)
        found = history.entry_at(seq) if history else None
        if found is None:
            return None
        def_seq, definition = found
        policies = self.policies.get(name)
        policy = policies.entry_at(seq) if policies else None
        if policy is None or policy[0] < def_seq:
            return definition
        return definition.model_copy(update={"approval": policy[1]})

    def latest_commands(self) -> list[CommandDefinition]:
        """Every command as currently defined (at the end of what has been folded)."""
        end = self.applied_through + 1
        found = (self.command_at(name, end) for name in sorted(self.commands))
        return [d for d in found if d is not None]


def default_definitions() -> list[CommandDefinition]:
    """The command definitions shipped with symbiote (``registry/defaults/*.toml``)."""
    folder = resources.files("symbiote.registry") / "defaults"
    paths = sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml"))
    if not paths:
        raise ConfigError("no default command definitions found in the package")
    return [load_definition(p) for p in paths]
