"""The audit: re-check the whole log from scratch, and explain one command.

:func:`audit` reads every message of the stream in order and re-verifies, without trusting
any projection or any earlier decision:

* **signatures** — each event against the key registry as it stood at the event's own
  position (registry events folded in the same pass), and the role each event type needs;
* **policy** — for each ``command.started``: a valid agent-signed proposal preceded it and,
  when the command's approval mode (as in force at the proposal) is ``user``, an approval
  request and a quorum of valid approvals from allowed principals, judged with
  :mod:`symbiote.registry.policy` (:func:`fold_command`, :func:`check_proposal`,
  :func:`check_approval` inside it); outcomes need a start before them;
* **checkpoints** — each ``audit.checkpoint``'s signature, chain (``first_seq``/``prev``) and
  root recomputed from the messages present now (:mod:`symbiote.projections.checkpoints`),
  and the copies outside NATS compared with those in the log (missing, edited, forked);
* **continuity** — gaps in the sequence (deleted messages), a purged beginning, a tail cut
  off below the last checkpoint or the stream's own last sequence, and events not yet
  covered by any checkpoint.

The report names the first bad sequence and why. :func:`why` tells one command's story:
input → proposal → approvals → execution → result.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import html
import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from symbiote.bus.envelope import Envelope, from_wire
from symbiote.bus.events import BODY_TYPES, parse_body, subject_for
from symbiote.bus.ids import derived_event_id, event_id_ms, is_event_id, now_ms
from symbiote.bus.stream import Bus, StoredMsg, stream_config_problems
from symbiote.errors import ConfigError, DecodeError
from symbiote.files import write_private
from symbiote.projections.checkpoints import (
    CheckpointRecord,
    compute_root,
    load_checkpoint_files,
    load_checkpoint_rows,
    projected_through,
)
from symbiote.projections.fold import RecentCommands, command_histories, command_id_of, jsonable, output_said
from symbiote.projections.verify import (
    CHECKPOINT_SUBJECT,
    CachedKeyring,
    Decoded,
    WorkerPool,
    entry_hash,
    reading,
    verdict_at,
)
from symbiote.registry.follower import RegistryFollower
from symbiote.registry.policy import (
    RUNTIME_DECISIONS,
    CommandLife,
    check_proposal,
    decision_problem,
    fold_command,
    runtime_signed,
)
from symbiote.registry.state import REGISTRY_TYPES, RegistryState, is_registry_change
from symbiote.signers.keyring import Verdict

__all__ = [
    "EXPECTED_ROLES",
    "AuditReport",
    "CheckpointCopies",
    "CommandStory",
    "Execution",
    "Finding",
    "Refusal",
    "Step",
    "audit",
    "find_input",
    "find_verified_input",
    "human_time",
    "judge_execution",
    "why",
    "write_html",
]

Severity = Literal["fail", "warn"]
SIGNATURE_REASONS = frozenset({"bad_signature", "unknown_key", "revoked_key", "wrong_role"})
_INPUT = frozenset({"user", "owner", "runtime"})
EXPECTED_ROLES: dict[str, frozenset[str]] = {
    "input.text": _INPUT,
    "input.voice": _INPUT,
    "input.system": _INPUT,
    "command.proposed": frozenset({"agent"}),
    "command.clarify": frozenset({"agent"}),
    "command.suggested": frozenset({"agent"}),
    "command.approved": frozenset({"user"}),
    "command.rejected": frozenset({"user"}),
    "command.approval_requested": frozenset({"runtime"}),
    "command.denied": frozenset({"runtime"}),
    "command.started": frozenset({"runtime"}),
    "command.succeeded": frozenset({"runtime"}),
    "command.failed": frozenset({"runtime"}),
    "audit.checkpoint": frozenset({"runtime"}),
}
"""Which roles may sign each (non-registry) event type; registry events need an owner key."""
_MAX_PER_KIND = 1000


@dataclass(frozen=True)
class Finding:
    """One thing the audit found: where (stream sequence), how bad, what, in plain words."""

    seq: int | None
    severity: Severity
    kind: str
    message: str
    event_id: str | None = None
    command_id: str | None = None

    def as_map(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Execution:
    """One start of a command, for people: what ran, who proposed it, who approved it, how it ended."""

    seq: int
    command_id: str
    command: str
    args: Any  # as JSON values
    proposed_by: str | None
    confidence: Any
    approved_by: list[str]
    allowed: bool
    outcome: str | None = None  # succeeded, failed, or None while none is in the log
    asked_by: str | None = None  # who made the request it answers (None: not found in the log)
    request: str | None = None  # what they said or typed (the first 300 characters)
    at: int | None = None  # when it started (ms, as the runtime signed it)

    def as_map(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Refusal:
    """A command that ended without running, for people: denied by the runtime or rejected by a person."""

    seq: int
    command_id: str
    command: str | None
    reason: str
    detail: str
    rejected_by: str | None
    asked_by: str | None = None
    request: str | None = None
    at: int | None = None

    def as_map(self) -> dict[str, Any]:
        return asdict(self)


_EXECUTIONS_KEPT = 1000
_INPUTS_KEPT = 20_000  # the latest requests, to say who asked for each command


@dataclass
class AuditReport:
    """The audit's result: ``ok`` unless some finding is a failure; ``first_failure`` names where."""

    findings: list[Finding] = field(default_factory=list)
    omitted: dict[str, int] = field(default_factory=dict)  # findings not listed, by kind
    omitted_failures: int = 0  # of those, failures: they count against ``ok`` all the same
    stream_first_seq: int = 0
    stream_last_seq: int = 0
    messages: int = 0
    signatures_checked: int = 0
    commands_executed: int = 0
    checkpoints: int = 0
    checkpoint_files: int = 0
    checkpoint_rows: int | None = None  # copies in PostgreSQL compared (None: PostgreSQL not consulted)
    covered_through: int = 0
    checkpoint_dir: str | None = None
    checked_at: int = 0
    executions: list[Execution] = field(default_factory=list)  # the latest starts (at most 1,000)
    refusals: list[Refusal] = field(default_factory=list)  # the latest denials and rejections (at most 1,000)

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "fail"]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.omitted_failures

    @property
    def first_failure(self) -> Finding | None:
        """The failure at the lowest sequence (failures without a sequence come last)."""
        fails = self.failures
        if not fails:
            return None
        return min(fails, key=lambda f: (f.seq is None, f.seq or 0))

    def summary(self) -> str:
        """One sentence: the verdict and, when it failed, the first bad sequence and why."""
        first = self.first_failure
        if first is None:
            warns = len(self.findings)
            extra = f" ({warns} note{'s' if warns != 1 else ''})" if warns else ""
            return f"OK: {self.messages} events checked, nothing wrong found{extra}"
        where = f"at seq {first.seq}" if first.seq is not None else "(outside the log)"
        return f"FAILED {where}: {first.message} ({len(self.failures) + self.omitted_failures} problem(s) in all)"

    def as_map(self) -> dict[str, Any]:
        first = self.first_failure
        return {
            "ok": self.ok,
            "summary": self.summary(),
            "first_bad_seq": first.seq if first is not None else None,
            "first_bad_reason": first.message if first is not None else None,
            "stream_first_seq": self.stream_first_seq,
            "stream_last_seq": self.stream_last_seq,
            "messages": self.messages,
            "signatures_checked": self.signatures_checked,
            "commands_executed": self.commands_executed,
            "checkpoints": self.checkpoints,
            "checkpoint_files": self.checkpoint_files,
            "checkpoint_rows": self.checkpoint_rows,
            "covered_through": self.covered_through,
            "checkpoint_dir": self.checkpoint_dir,
            "checked_at": self.checked_at,
            "findings": [f.as_map() for f in self.findings],
            "executions": [e.as_map() for e in self.executions],
            "refusals": [r.as_map() for r in self.refusals],
            "omitted": self.omitted,
            "omitted_failures": self.omitted_failures,
        }


def judge_execution(
    state: RegistryState, command_id: str, before: list[tuple[int, Envelope]], started: Envelope, seq: int
) -> list[str]:
    """Why a ``command.started`` at ``seq`` was not allowed (empty when it was).

    ``before`` holds the command's events before ``seq``; the rules are those the dispatcher
    applies, through the same :mod:`symbiote.registry.policy` functions.
    """
    return _judge(state, fold_command(command_id, before, state), started)


def _judge(state: RegistryState, life: CommandLife, started: Envelope) -> list[str]:
    """:func:`judge_execution` of a start, given the life folded from the events before it."""
    if life.proposal is None:
        return ["it was started without a valid proposal before it"]
    policy_mode = life.definition.approval.mode if life.definition is not None else "none"
    decided_at = started.at
    if policy_mode == "user" and life.requested_at_seq:
        request = next((e for s, e in life.events if s == life.requested_at_seq), None)
        decided_at = request.at if request is not None else started.at
    definition, denial = check_proposal(state, life.proposal, life.proposal_seq, decided_at)
    problems: list[str] = []
    if denial is not None and not (denial.reason == "expired" and life.starts):
        problems.append(f"its proposal (seq {life.proposal_seq}) was not valid: {denial.reason}: {denial.detail}")
    if definition is None:
        return problems
    if life.terminal is not None:
        problems.append(f"it was started again after the command had ended at seq {life.terminal_seq}")
    elif life.starts and not definition.idempotent:
        problems.append(f"it was run a second time although {definition.name} is not idempotent")
    if definition.approval.mode == "user":
        policy = definition.approval
        if not life.requested_at_seq:
            problems.append(f"{definition.name} {policy.describe()}, but no approval was ever requested")
        elif life.rejected_by is not None:
            problems.append(f"it ran although {life.rejected_by} rejected it")
        elif not life.quorum_met():
            got = ", ".join(sorted(life.approvals)) or "nobody"
            problems.append(
                f"{definition.name} {policy.describe()}, but only {len(life.approvals)} valid approval(s) "
                f"preceded it ({got})"
            )
    return problems


class _Auditor:
    """The ordered pass. It keeps the events of the ``cache_size`` most recently active commands;
    an older command that goes on is read back from the stream (:meth:`prepare`), so memory for
    command histories stays bounded however long the log is."""

    def __init__(self, report: AuditReport, bus: Bus | None = None, *, cache_size: int = 10_000) -> None:
        self.report = report
        self.bus = bus
        self.keyring = CachedKeyring()
        self.state = RegistryState(keyring=self.keyring)
        self.expected = 1
        self.last_present = 0
        self.entries_seq: list[int] = []
        self.entries: list[bytes] = []
        self.entry_times: list[int] = []  # when the server stored each entry (ms; 0 if unknown)
        self.checkpoint_msgs: dict[int, bytes] = {}
        self.gaps: list[tuple[int, int]] = []
        self.lives: RecentCommands[list[tuple[int, Envelope]]] = RecentCommands(cache_size)
        self.executions: OrderedDict[str, Execution] = OrderedDict()  # the latest starts, for the report
        self.refusals: OrderedDict[str, Refusal] = OrderedDict()  # the latest commands refused, for the report
        self.inputs: OrderedDict[str, tuple[str, str]] = OrderedDict()  # request id -> (who, what), the latest
        self.seen_ids: dict[str, int] = {}
        self._counts: dict[tuple[str, str], int] = {}

    def add(self, finding: Finding) -> None:
        """List ``finding``; past the first 1,000 of its kind and severity (so that notes never
        crowd out failures) only count it."""
        key = (finding.kind, finding.severity)
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        if count > _MAX_PER_KIND:
            self.report.omitted[finding.kind] = self.report.omitted.get(finding.kind, 0) + 1
            self.report.omitted_failures += finding.severity == "fail"
        else:
            self.report.findings.append(finding)

    # -- the ordered pass -------------------------------------------------------------------
    async def prepare(self, batch: Sequence[Decoded]) -> None:
        """Read back the histories of the evicted commands that go on in ``batch``."""
        evicted = self.lives.evicted
        wanted = list(dict.fromkeys(cid for item in batch if (cid := command_id_of(item.subject)) in evicted))
        if not wanted or self.bus is None:
            return
        for cid, events in (await command_histories(self.bus, wanted, batch[0].seq)).items():
            self.lives.put(cid, events)

    def message(self, item: Decoded, stored_ms: int = 0) -> None:
        report = self.report
        seq = item.seq
        if seq < self.expected:
            return
        if seq > self.expected:
            self._gap(self.expected, seq - 1)
        self.expected = seq + 1
        self.last_present = seq
        report.messages += 1
        if item.subject == CHECKPOINT_SUBJECT:
            self.checkpoint_msgs[seq] = item.data
        else:
            self.entries_seq.append(seq)
            self.entries.append(entry_hash(seq, item.subject, item.data))
            self.entry_times.append(stored_ms)
        event = item.event
        if event is None:
            self.add(
                Finding(
                    seq,
                    "fail",
                    "unreadable",
                    f"the message is not a valid signed event ({item.error})",
                    item.peeked_id,
                    command_id_of(item.subject),
                )
            )
            return
        cid = command_id_of(item.subject)
        report.signatures_checked += len(event.sigs)
        by_runtime = False
        if is_registry_change(item.subject, event.type):
            verdict = self.state.apply(event, seq)
            if not verdict.ok:
                severity: Severity = "fail" if verdict.reason in SIGNATURE_REASONS else "warn"
                self.add(
                    Finding(
                        seq,
                        severity,
                        "registry",
                        f"a registry change was refused: {verdict.reason}: {verdict.detail}",
                        event.id,
                    )
                )
        else:
            verdict = verdict_at(self.state.keyring, event, seq, item.sig_ok)
            if not verdict.ok:
                self.add(Finding(seq, "fail", "signature", _signature_words(event, verdict), event.id, cid))
            else:
                self._check_role(event, seq, verdict, cid)
                by_runtime = runtime_signed(event, verdict)
                if event.type.startswith("input."):
                    self._remember_input(event)
        earlier = self.seen_ids.get(event.id)
        # an event signed as it says, seen here first, yet off its subject: its readers (the
        # registry, the dispatcher) never saw it where it lies; a copy of one seen before is a replay
        self._check_shape(item, event, cid, misplaced_fails=verdict.ok and earlier is None)
        if earlier is not None:
            self.add(Finding(seq, "warn", "replayed", f"event {event.id} appeared before at seq {earlier}", event.id))
        else:
            self.seen_ids[event.id] = seq
        if cid is not None:
            self._command_event(cid, event, seq, by_runtime)

    def _gap(self, start: int, end: int) -> None:
        self.gaps.append((start, end))
        where = f"seq {start}" if start == end else f"seqs {start}–{end}"
        if start == 1:
            text = f"the beginning of the log is missing ({where}): it was purged or deleted"
        else:
            count = end - start + 1
            text = f"{count} event{'s are' if count > 1 else ' is'} missing from the log ({where}): deleted"
        self.add(Finding(start, "fail", "gap", text))

    def _check_role(self, event: Envelope, seq: int, verdict: Verdict, cid: str | None) -> None:
        allowed = EXPECTED_ROLES.get(event.type)
        if allowed is None:
            return
        roles = {c.role for c in verdict.checks}
        if event.actor_role not in allowed or not roles <= allowed:
            self.add(
                Finding(
                    seq,
                    "fail",
                    "wrong_role",
                    f"{event.type} must be signed by {' or '.join(sorted(allowed))}, "
                    f"but {event.actor} ({', '.join(sorted(r or '?' for r in roles))}) signed it",
                    event.id,
                    cid,
                )
            )

    def _check_shape(self, item: Decoded, event: Envelope, cid: str | None, *, misplaced_fails: bool) -> None:
        if event.type not in BODY_TYPES:
            self.add(Finding(item.seq, "warn", "unknown_type", f"unknown event type {event.type!r}", event.id, cid))
            return
        try:
            parse_body(event)
            expected_subject = subject_for(event)
        except DecodeError as exc:
            self.add(
                Finding(
                    item.seq,
                    "warn",
                    "malformed",
                    f"{event.type} body does not fit its type: {exc.fields.get('error', exc.message)}"[:400],
                    event.id,
                    cid,
                )
            )
            return
        if expected_subject != item.subject:
            misplaced_fails = misplaced_fails and _route(item.subject) != _route(expected_subject)
            unseen = " (the readers of such events do not look for it there)" if misplaced_fails else ""
            self.add(
                Finding(
                    item.seq,
                    "fail" if misplaced_fails else "warn",
                    "subject",
                    f"{event.type} was published on {item.subject} instead of {expected_subject}{unseen}",
                    event.id,
                    cid,
                )
            )

    def _remember_input(self, event: Envelope) -> None:
        text = event.body.get("text")
        self.inputs[event.id] = (event.actor, text[:300] if isinstance(text, str) else "")
        while len(self.inputs) > _INPUTS_KEPT:
            self.inputs.popitem(last=False)

    def _asked(self, proposal: Envelope | None) -> tuple[str | None, str | None]:
        """Who asked for a command, and what they said (the request its proposal answers)."""
        if proposal is None:
            return None, None
        for ref in (proposal.cause, proposal.corr):
            if ref is not None and ref in self.inputs:
                return self.inputs[ref]
        return None, None

    def _command_event(self, cid: str, event: Envelope, seq: int, by_runtime: bool) -> None:
        """Follow one event of command ``cid``. Only the runtime's own decisions about this very
        command count as starts, outcomes and refusals: a forged one has its finding already
        (signature, role), and a validly signed one of another command copied onto this one's
        subjects (its ``command_id`` says whose it is) changes nothing, as when the log is folded."""
        before = self.lives.touch(cid, list)
        if event.type in RUNTIME_DECISIONS and not (by_runtime and event.body.get("command_id") == cid):
            before.append((seq, event))
            return
        if event.type == "command.denied" and event.cause == cid:
            self._refused(cid, fold_command(cid, [*before, (seq, event)], self.state), event, seq)
        if event.type == "command.started":
            self.report.commands_executed += 1
            life = fold_command(cid, before, self.state)
            problems = _judge(self.state, life, event)
            for problem in problems:
                self.add(Finding(seq, "fail", "policy", f"command {cid} ran but {problem}", event.id, cid))
            self._executed(cid, life, event, seq, not problems)
        elif event.type in ("command.succeeded", "command.failed") and cid in self.executions:
            self.executions[cid].outcome = event.type.rsplit(".", 1)[1]
        elif event.type in ("command.succeeded", "command.failed") and not fold_command(cid, before, self.state).starts:
            self.add(
                Finding(
                    seq,
                    "fail",
                    "policy",
                    f"command {cid} has an outcome ({event.type}) but was never started",
                    event.id,
                    cid,
                )
            )
        before.append((seq, event))

    def _executed(self, cid: str, life: CommandLife, started: Envelope, seq: int, allowed: bool) -> None:
        proposal = life.proposal
        body = proposal.body if proposal is not None else {}
        asked_by, request = self._asked(proposal)
        self.executions[cid] = Execution(
            seq,
            cid,
            str(body.get("command", "?")),
            jsonable(body.get("args")),
            proposal.actor if proposal is not None else None,
            jsonable(body.get("confidence")),
            sorted(life.approvals),
            allowed,
            asked_by=asked_by,
            request=request,
            at=started.at,
        )
        self.executions.move_to_end(cid)
        while len(self.executions) > _EXECUTIONS_KEPT:
            self.executions.popitem(last=False)

    def _refused(self, cid: str, life: CommandLife, denial: Envelope, seq: int) -> None:
        if life.terminal is not denial:  # a note about the command, or one after its end: it goes on
            return
        if life.starts:  # it ran, and what came of it was lost (outcome_unknown): not a refusal
            if cid in self.executions:
                self.executions[cid].outcome = "unknown (its result was lost)"
            return
        command = life.proposal.body.get("command") if life.proposal is not None else None
        asked_by, request = self._asked(life.proposal)
        self.refusals[cid] = Refusal(
            seq,
            cid,
            command if isinstance(command, str) else None,
            str(denial.body.get("reason", "?")),
            str(denial.body.get("detail", ""))[:300],
            life.rejected_by,
            asked_by=asked_by,
            request=request,
            at=denial.at,
        )
        while len(self.refusals) > _EXECUTIONS_KEPT:
            self.refusals.popitem(last=False)

    # -- after the pass ---------------------------------------------------------------------
    def root_of(self, record: CheckpointRecord) -> tuple[bytes, int]:
        lo = bisect.bisect_left(self.entries_seq, record.first_seq)
        hi = bisect.bisect_right(self.entries_seq, record.last_seq)
        return compute_root(record.prev, self.entries[lo:hi]), hi - lo

    def first_gap_in(self, first: int, last: int) -> int | None:
        for start, end in self.gaps:
            if end >= first and start <= last:
                return max(start, first)
        return None

    def check_record(self, record: CheckpointRecord, where: str) -> None:
        """Recompute a checkpoint's root and count from the messages present now."""
        if record.last_seq >= record.seq or record.first_seq > record.last_seq + 1:
            self.add(Finding(record.seq, "fail", "checkpoint", f"{where} covers an impossible range", record.event_id))
            return
        root, count = self.root_of(record)
        if root == record.root and count == record.count:
            return
        gap = self.first_gap_in(record.first_seq, record.last_seq)
        truncated = record.last_seq > self.last_present
        if truncated:
            text = (
                f"{where} signed {record.count} events up to seq {record.last_seq}, but the log now ends at "
                f"seq {self.last_present}: its tail was cut off"
            )
            seq = self.last_present + 1
        elif count < record.count:
            text = (
                f"{where} signed {record.count} events in seqs {record.first_seq}–{record.last_seq}, "
                f"but only {count} are still there: events were deleted"
            )
            seq = gap or record.first_seq
        else:
            text = (
                f"{where} does not match the events in seqs {record.first_seq}–{record.last_seq}: "
                "they were changed after it was signed"
            )
            seq = gap or record.first_seq
        self.add(Finding(seq, "fail", "checkpoint", text, record.event_id))


def _check_owner(auditor: _Auditor, owner_kid: str) -> None:
    """The log's first owner key (which registered itself, and through which every other key came
    in) must be this installation's: another owner key could be anyone's, since registering a
    public key needs no proof of holding it."""
    owners = [entry for entry in auditor.state.keyring.keys.values() if entry.role == "owner"]
    if not owners:
        return
    first = min(owners, key=lambda entry: entry.registered_seq)
    if first.kid == owner_kid:
        return
    also = " (it is registered later in the log, by that key)" if owner_kid in {e.kid for e in owners} else ""
    auditor.add(
        Finding(
            first.registered_seq,
            "fail",
            "owner",
            f"the log's first owner key ({first.principal}, {first.kid}) is not this installation's owner key "
            f"({owner_kid}){also}: the log was written for someone else, or replaced",
        )
    )


def _signature_words(event: Envelope, verdict: Verdict) -> str:
    reason = verdict.reason
    # the actor is only what the event claims: the signature is what does not hold
    if reason == "unknown_key":
        return (
            f"{event.type} claiming to be from {event.actor} is signed with a key that was not registered "
            f"({verdict.detail})"
        )
    if reason == "revoked_key":
        return f"{event.type} claiming to be from {event.actor} is signed with a revoked key ({verdict.detail})"
    if reason == "bad_signature":
        return f"{event.type} claiming to be from {event.actor} has a signature that does not verify ({verdict.detail})"
    return f"{event.type}: {reason}: {verdict.detail}"


def _verify_record(auditor: _Auditor, record: CheckpointRecord, event: Envelope) -> str | None:
    verdict = auditor.state.keyring.verify(event, record.seq)
    if not verdict.ok:
        return f"{verdict.reason}: {verdict.detail}"
    if any(c.role != "runtime" for c in verdict.checks) or event.actor_role != "runtime":
        return f"signed by {event.actor}, not by a runtime key"
    return None


@dataclass
class CheckpointCopies:
    """The checkpoints kept in one place outside NATS (files, or PostgreSQL rows), as loaded."""

    where: str  # "in the files", "in PostgreSQL"
    records: list[CheckpointRecord]
    problems: list[tuple[str, str]]  # (file or row, what is wrong with it)
    required: bool = True  # a checkpoint without a copy here fails (not only the newest)


def _check_checkpoints(
    auditor: _Auditor, report: AuditReport, outside: list[CheckpointCopies], uncovered_grace_s: float
) -> None:
    nats_records: dict[int, CheckpointRecord] = {}
    previous: CheckpointRecord | None = None
    for seq, data in sorted(auditor.checkpoint_msgs.items()):
        try:
            record, event = CheckpointRecord.from_wire(seq, data)
        except DecodeError as exc:
            auditor.add(Finding(seq, "fail", "checkpoint", f"a message on the checkpoint subject is not one: {exc}"))
            continue
        problem = _verify_record(auditor, record, event)
        if problem is not None:
            auditor.add(Finding(seq, "fail", "checkpoint", f"forged checkpoint: {problem}", record.event_id))
            continue
        report.checkpoints += 1
        nats_records[seq] = record
        expected_first = previous.last_seq + 1 if previous is not None else 1
        expected_prev = previous.root if previous is not None else None
        if record.first_seq != expected_first or record.prev != expected_prev:
            after = f"the checkpoint at seq {previous.seq}" if previous is not None else "the start of the log"
            auditor.add(
                Finding(
                    seq,
                    "fail",
                    "fork",
                    f"the checkpoint at seq {seq} does not continue {after} (starts at seq {record.first_seq}, "
                    f"expected {expected_first}): a checkpoint is missing or the chain forked",
                    record.event_id,
                )
            )
        auditor.check_record(record, f"the checkpoint at seq {seq}")
        previous = record
    covered = max((r.last_seq for r in nats_records.values()), default=0)
    for copies in outside:
        covered = max(covered, _check_copies(auditor, nats_records, copies))
    report.covered_through = covered
    _check_uncovered(auditor, report, covered, uncovered_grace_s)


def _check_copies(auditor: _Auditor, nats_records: dict[int, CheckpointRecord], copies: CheckpointCopies) -> int:
    """Compare the checkpoints kept in one place outside NATS with the log; return the highest
    sequence that a copy missing from the log still covers (0 if none)."""
    where = copies.where
    covered = 0
    for name, trouble in copies.problems:
        auditor.add(Finding(None, "fail", "checkpoint_file", f"{name} ({where}): {trouble}"))
    by_seq = {r.seq: r for r in copies.records}
    copy_previous: CheckpointRecord | None = None
    for record in copies.records:
        event = from_wire(record.wire)
        problem = _verify_record(auditor, record, event)
        if problem is not None:
            text = f"the copy {where} of the checkpoint at seq {record.seq}: {problem}"
            auditor.add(Finding(record.seq, "fail", "checkpoint_file", text))
            continue
        if copy_previous is not None and (
            record.first_seq != copy_previous.last_seq + 1 or record.prev != copy_previous.root
        ):
            auditor.add(
                Finding(
                    record.seq,
                    "fail",
                    "fork",
                    f"the checkpoints kept {where} fork at seq {record.seq}: it does not continue the one at seq "
                    f"{copy_previous.seq}",
                    record.event_id,
                )
            )
        copy_previous = record
        in_log = auditor.checkpoint_msgs.get(record.seq)
        if in_log is None:
            auditor.add(
                Finding(
                    record.seq,
                    "fail",
                    "missing_checkpoint",
                    f"the checkpoint at seq {record.seq} (covering seqs {record.first_seq}–{record.last_seq}) "
                    f"is kept {where} but is missing from the log",
                    record.event_id,
                )
            )
            auditor.check_record(record, f"the checkpoint kept {where} for seq {record.seq}")
            covered = max(covered, record.last_seq)
        elif in_log != record.wire:
            auditor.add(
                Finding(
                    record.seq,
                    "fail",
                    "edited_checkpoint",
                    f"the checkpoint at seq {record.seq} in the log differs from its copy {where}: edited",
                    record.event_id,
                )
            )
            auditor.check_record(record, f"the checkpoint kept {where} for seq {record.seq}")
    newest = max(nats_records) if nats_records else None
    for seq, record in nats_records.items():
        if seq not in by_seq:
            auditor.add(
                Finding(
                    seq,
                    "fail" if copies.required and seq != newest else "warn",
                    "unfiled_checkpoint",
                    f"the checkpoint at seq {seq} has no copy {where}",
                    record.event_id,
                )
            )
    highest = max((max(r.seq, r.last_seq) for r in copies.records), default=0)
    if highest > auditor.last_present:
        auditor.add(
            Finding(
                auditor.last_present + 1,
                "fail",
                "truncated",
                f"the log ends at seq {auditor.last_present}, but the checkpoints kept {where} show that it "
                f"reached at least seq {highest}: its tail was cut off",
            )
        )
    return covered


def _check_uncovered(auditor: _Auditor, report: AuditReport, covered: int, grace_s: float) -> None:
    """Events after the last checkpoint: a failure once they are older than the grace period (the
    runtime checkpoints every few seconds and when idle), a note while they are recent."""
    start = bisect.bisect_right(auditor.entries_seq, covered)
    seqs, times = auditor.entries_seq[start:], auditor.entry_times[start:]
    if not seqs:
        return
    deadline = report.checked_at - int(grace_s * 1000)
    stale = [seq for seq, stored in zip(seqs, times, strict=True) if 0 < stored <= deadline]
    if stale:
        auditor.add(
            Finding(
                stale[0],
                "fail",
                "uncovered",
                f"{len(stale)} event(s) from seq {stale[0]} to {stale[-1]} were stored more than {grace_s:g} s before "
                "the audit and no signed checkpoint covers them: nothing vouches that they are the events the "
                "runtime logged (is its checkpointer running? it signs one every 10 s and when the log is idle)",
            )
        )
    recent = [seq for seq in seqs if not stale or seq > stale[-1]]
    if recent:
        auditor.add(
            Finding(
                recent[0],
                "warn",
                "uncovered",
                f"{len(recent)} recent event(s) from seq {recent[0]} to {recent[-1]} are not yet covered by a "
                "signed checkpoint",
            )
        )


async def audit(
    bus: Bus,
    *,
    checkpoint_dir: Path | None,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 2048,
    uncovered_grace_s: float = 60.0,
    cache_size: int = 10_000,
    owner_kid: str | None = None,
    checkpoint_dsn: str | None = None,
    checkpoint_schema: str = "public",
) -> AuditReport:
    """Re-verify the whole log (see the module doc); ``progress(seq, last_seq)`` is called per batch.

    Events that no checkpoint covers fail the audit once they were stored more than
    ``uncovered_grace_s`` before it began; more recent ones are noted. The histories of the
    ``cache_size`` most recently active commands are kept in memory (older ones are read back).
    ``owner_kid``, this installation's owner key, must be among the log's owner keys: a whole log
    replaced by one that someone else's owner key signed fails even where no checkpoint file is.
    With ``checkpoint_dsn`` the copies in PostgreSQL (``audit_checkpoints``) are compared too.
    """
    report = AuditReport(checked_at=now_ms(), checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None)
    auditor = _Auditor(report, bus, cache_size=cache_size)
    # the copies first: one the runtime files while the log is read covers messages the audit may
    # not reach, and would look like a cut-off tail
    outside: list[CheckpointCopies] = []
    if checkpoint_dir is not None:
        outside.append(CheckpointCopies("in the files", *load_checkpoint_files(checkpoint_dir)))
        report.checkpoint_files = len(outside[-1].records)
    folded, folded_sha = 0, None
    if checkpoint_dsn is not None:  # PostgreSQL may lag (it is written after the file): only a note
        records, problems = await load_checkpoint_rows(checkpoint_dsn, checkpoint_schema)
        outside.append(CheckpointCopies("in PostgreSQL", records, problems, required=False))
        report.checkpoint_rows = len(records)
        # read before the stream: the projections cannot be ahead of the log they fold
        folded, folded_sha = await projected_through(checkpoint_dsn, checkpoint_schema)
    info = await bus.stream_info()
    report.stream_first_seq = int(info.state.first_seq or 0)
    report.stream_last_seq = int(info.state.last_seq or 0)
    for problem in stream_config_problems(info.config):
        # events moved off their subjects are read where they lie and judged there: what no
        # reader saw (a revocation, a start) must fail the audit, not pass as a misplaced note
        auditor.add(Finding(None, "fail", "stream_config", f"the log's stream is altered: {problem}"))
    checker = WorkerPool()
    checker.start()
    try:
        chunk: list[StoredMsg] = []

        async def flush() -> None:
            decoded = await checker.decode(chunk)
            auditor.keyring.remember(decoded)
            await auditor.prepare(decoded)
            for msg, item in zip(chunk, decoded, strict=True):
                auditor.message(item, msg.time_ms)
            auditor.lives.evict()
            if progress is not None and chunk:
                progress(chunk[-1].seq, report.stream_last_seq)
            chunk.clear()

        if report.stream_last_seq:
            async with reading(bus, "sym.>", from_seq=1) as messages:
                async for msg in messages:
                    if msg.seq > report.stream_last_seq:
                        break
                    chunk.append(msg)
                    if len(chunk) >= batch:
                        await flush()
            await flush()
    finally:
        checker.close()
    if report.stream_last_seq > auditor.last_present:
        auditor._gap(auditor.last_present + 1, report.stream_last_seq)
    _check_checkpoints(auditor, report, outside, uncovered_grace_s)
    if folded > report.stream_last_seq:  # a stream deleted and made anew, its tail left out
        auditor.add(
            Finding(
                report.stream_last_seq + 1,
                "fail",
                "truncated",
                f"the log ends at seq {report.stream_last_seq}, but the projections in PostgreSQL folded it "
                f"through seq {folded}: its tail was cut off (the stream was made anew)",
            )
        )
    elif folded and folded_sha is not None:  # made anew and filled up again past that point
        there = await bus.get(folded)
        if there is not None and hashlib.sha256(there.data).digest() != folded_sha:
            auditor.add(
                Finding(
                    folded,
                    "fail",
                    "rewritten",
                    f"the message at seq {folded} is not the one the projections in PostgreSQL folded there: "
                    "the log was rewritten from there on (the stream made anew)",
                )
            )
    if owner_kid is not None:
        _check_owner(auditor, owner_kid)
    if report.messages and not report.checkpoints and outside and not any(c.records for c in outside):
        auditor.add(Finding(None, "warn", "no_checkpoints", "there are no signed checkpoints yet"))
    report.findings.sort(key=lambda f: (f.seq is None, f.seq or 0, f.severity != "fail"))
    report.executions = sorted(auditor.executions.values(), key=lambda e: e.seq)
    report.refusals = sorted(auditor.refusals.values(), key=lambda r: r.seq)
    return report


# -- why -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One step of a command's story."""

    kind: str  # input | proposal | approval_request | approval | rejection | execution | result | denial |
    # question | suggestion | note | gap
    seq: int | None
    at: int | None
    who: str | None
    text: str
    ok: bool = True
    details: dict[str, Any] = field(default_factory=dict)
    signed: bool | None = None  # where ``ok`` says more (an approval that did not count): signed as it says

    @property
    def holds(self) -> bool:
        """The step is in the log and signed as it says (what :attr:`CommandStory.chain_ok` asks)."""
        return self.ok if self.signed is None else self.signed

    def as_map(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "seq": self.seq,
            "at": self.at,
            "who": self.who,
            "text": self.text,
            "ok": self.ok,
            "holds": self.holds,
            "details": jsonable(self.details),
        }


@dataclass
class CommandStory:
    """Why a command did what it did: its steps in log order and any policy problems."""

    command_id: str
    found: bool
    state: str = "unknown"
    command: str | None = None
    steps: list[Step] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    request_id: str | None = None  # asked by the id of the request: the command the agent made of it
    request_seq: int | None = None  # a request found in the log that nothing was made of (not found)
    request_problem: str | None = None  # why that request does not hold, if it does not

    @property
    def ran(self) -> bool:
        """The command was started, by a start the runtime signed (the policy question, "was it
        allowed to run", applies); a start whose signature fails proves nothing."""
        return any(step.kind == "execution" and step.holds for step in self.steps)

    @property
    def chain_ok(self) -> bool:
        """Every step holds: each is in the log and signed as it says (a request that is gone, or
        a forged step, makes this false even where the policy was kept)."""
        return all(step.holds for step in self.steps)

    def as_map(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "request_id": self.request_id,
            "request_seq": self.request_seq,
            "request_problem": self.request_problem,
            "found": self.found,
            "state": self.state,
            "command": self.command,
            "ran": self.ran,
            "allowed": not self.problems if self.ran else None,  # None: it never ran
            "problems": self.problems,
            "chain_ok": self.chain_ok,
            "steps": [s.as_map() for s in self.steps],
        }

    def not_found_words(self) -> str:
        """What the log holds under this id when no command does."""
        if self.request_seq is not None:
            where = f"The request {self.request_id} (seq {self.request_seq})"
            if self.request_problem is not None:
                return f"{where} led to nothing, and no one can be said to have asked it: {self.request_problem}."
            return f"{where} led to nothing: the agent made no command of it."
        return f"No command, nor a request that led to one, has the id {self.command_id}."

    def lines(self) -> list[str]:
        """The story as plain sentences, one per step."""
        if not self.found:
            return [self.not_found_words()]
        out = [f"Command {self.command_id} ({self.command or '?'}): {self.state}"]
        for step in self.steps:
            where = f"seq {step.seq}" if step.seq is not None else "—"
            mark = "✓" if step.ok else "✗"
            out.append(f"  {mark} [{where}] {step.kind}: {step.text}")
        if not self.chain_ok:
            out.append("Steps marked ✗ do not hold: the chain cannot be proven there.")
        if self.problems:
            out.append("Policy problems:")
            out.extend(f"  ✗ {p}" for p in self.problems)
        else:
            verdict = self.verdict()
            out.append(verdict[0].upper() + verdict[1:] + ".")
        return out

    def verdict(self) -> str:
        """Whether it ran and was allowed to, in words, when no policy problem was found."""
        if self.ran:
            return "allowed by the policy in force"
        if any(step.kind == "execution" for step in self.steps):
            return "nothing proves it ran: no start of it holds as the runtime's"
        if any(step.kind == "gap" for step in self.steps):
            return "nothing left in the log says it ran, but events were deleted where its start could have been"
        return "it never ran"


def _input_words(source: Envelope) -> str:
    """Who asked what: typed, or said (a transcript of how long a recording, by which model)."""
    text = source.body.get("text")
    if source.type == "input.voice":
        audio_ms, model = source.body.get("audio_ms"), source.body.get("model")
        length = f"{audio_ms / 1000:.1f} s, " if isinstance(audio_ms, int) else ""
        return f"{source.actor} said ({length}heard by {model}): {text!r}"
    return f"{source.actor} asked: {text!r}"


async def find_input(bus: Bus, input_id: str, before_seq: int) -> tuple[int, Envelope] | None:
    """The request (``sym.in.…``) with id ``input_id`` stored before ``before_seq``, and where; None
    if the log does not hold it. The 5,000 messages before ``before_seq`` are read first."""
    windows = [(max(1, before_seq - 5000), before_seq)]
    if windows[0][0] > 1:
        windows.append((1, windows[0][0]))
    for start, end in windows:
        async with reading(bus, "sym.in.>", from_seq=start) as messages:
            async for msg in messages:
                if msg.seq >= end:
                    break
                try:
                    event = from_wire(msg.data)
                except DecodeError:
                    continue
                if event.id == input_id:
                    return msg.seq, event
    return None


async def find_verified_input(
    bus: Bus, input_id: str, before_seq: int, follower: RegistryFollower | None = None
) -> tuple[int, Envelope, Verdict] | None:
    """:func:`find_input`, with the request's signatures checked as the registry stood where it
    lies (``follower`` reads the registry; a new one unless given)."""
    found = await find_input(bus, input_id, before_seq)
    if found is None:
        return None
    seq, event = found
    state = await (follower or RegistryFollower(bus)).ensure_through(seq)
    return seq, event, state.keyring.verify(event, seq)


async def why(bus: Bus, command_id: str, *, clock_leeway_ms: int = 2_000) -> CommandStory:
    """The chain of one command: input → proposal (agent, confidence) → approvals → execution → result.

    Where its proposal is gone, deletions since its id was made are marked (``clock_leeway_ms``
    earlier: the agent's clock may run ahead of the server's), and the run of them just before
    the first message stored since; where it has not ended, deletions after it (for one that did
    not start, until its proposal expired)."""
    if not is_event_id(command_id):
        raise ConfigError("a command id is the UUID of its proposal (lower-case, with hyphens)", command_id=command_id)
    story = CommandStory(command_id, found=False)
    msgs = await bus.history(f"sym.cmd.{command_id}.>", 1, limit=None)  # all: none may be left out of the story
    if not msgs:  # the id of a request? The agent names what it makes of one after it
        for purpose in ("proposal", "clarify", "suggest"):
            derived = derived_event_id(command_id, purpose)
            if await bus.next_after(f"sym.cmd.{derived}.>", 1) is not None:
                story = await why(bus, derived, clock_leeway_ms=clock_leeway_ms)
                story.request_id = command_id
                return story
        request = await find_verified_input(bus, command_id, await bus.last_seq() + 1)
        if request is not None:  # a request nothing came of (yet): say so, not "no such id"
            seq, _, verdict = request
            story.request_id, story.request_seq = command_id, seq
            if not verdict.ok:
                story.request_problem = f"its signature does not hold ({verdict.reason}: {verdict.detail})"
        return story
    story.found = True
    last = msgs[-1].seq
    state = RegistryState()
    async with reading(bus, "sym.reg.>", from_seq=1) as messages:
        async for msg in messages:
            if msg.seq > last:
                break
            with contextlib.suppress(DecodeError):
                event = from_wire(msg.data)
                if event.type in REGISTRY_TYPES:
                    state.apply(event, msg.seq)
    events: list[tuple[int, Envelope]] = []
    for msg in msgs:
        try:
            events.append((msg.seq, from_wire(msg.data)))
        except DecodeError as exc:
            story.steps.append(Step("note", msg.seq, None, None, f"unreadable message on {msg.subject}: {exc}", False))
    life = fold_command(command_id, events, state)
    if life.proposal or life.terminal:
        story.state = str(life.summary()["state"])
    else:
        replies = {
            "command.clarify": "the agent asked what was meant",
            "command.suggested": "no command fits: the agent suggested one",
        }
        story.state = replies[life.reply] if life.reply else "no proposal"
    if life.proposal is not None:
        story.command = str(life.proposal.body.get("command"))
    # the request it answers: the proposal's cause, or a question's or a suggestion's (an event
    # about the command itself, a denial say, has the command as its cause: no request there)
    anchor = (life.proposal_seq, life.proposal) if life.proposal is not None else None
    if anchor is None:
        anchor = next(((s, e) for s, e in events if e.type in ("command.clarify", "command.suggested")), None)
    cause = anchor[1].cause if anchor is not None else None
    if anchor is None:  # its proposal is gone: the runtime's decisions about it carry the request's id (corr)
        for seq, event in events:
            if event.corr not in (None, command_id) and decision_problem(state, command_id, event, seq) is None:
                anchor, cause = (seq, event), event.corr
                break
    begins = events[0][0] if events else last  # where the story begins in the log
    if anchor is not None and cause is not None and cause != command_id:
        found = await find_input(bus, cause, anchor[0])
        if found is None:
            missing = f"the request it answers (event {cause}) is not in the log: deleted, or never published"
            story.steps.append(Step("input", None, None, None, missing, False, {"event_id": cause}))
        else:
            seq, source = found
            begins = min(begins, seq)
            verdict = state.keyring.verify(source, seq)
            story.steps.append(
                Step(
                    "input",
                    seq,
                    source.at,
                    source.actor,
                    _input_words(source),
                    verdict.ok,
                    {"event_id": source.id, "type": source.type, "verified": verdict.principals},
                )
            )
    # where the log lost events the story may have held (the runtime deletes none), the story says
    # so, in place: a deleted proposal, approval, start or outcome is judged as missing
    stream = (await bus.stream_info(deleted=True)).state
    deleted = [(d, d) for d in sorted(stream.deleted or [])]
    first_seq = int(stream.first_seq or 1)
    purged = False
    if life.proposal is None and begins == (events[0][0] if events else last):
        # no proposal, nor the request it answered: deletions since the command's id was made
        # (its proposal's id, by the agent's clock) may have held them
        since = await bus.first_seq_since(event_id_ms(command_id) - clock_leeway_ms)
        begins = min(begins, since if since is not None else last + 1)
        present = {d for d, _ in deleted}
        while begins - 1 in present:  # a deletion just before the first message since then may be one
            begins -= 1
        purged = first_seq > 1 and begins <= first_seq  # the beginning was purged, and may have held them
        begins -= 1
    deleted = [(a, b) for a, b in deleted if b > begins]
    if purged:
        deleted.insert(0, (1, first_seq - 1))
    if life.reply is not None or life.terminal is not None:
        ends = events[-1][0] if events else last  # a question, a suggestion, an ended command: nothing follows
    elif life.proposal is not None and not life.started_seq:  # it could start only before it expired
        expires = life.proposal.body.get("expires_at")
        until = await bus.first_seq_since(expires + clock_leeway_ms) if isinstance(expires, int) else None
        ends = until if until is not None else 1 << 62
    else:
        ends = 1 << 62  # started, or no proposal left: its outcome may come at any time
    deleted = [(a, b) for a, b in deleted if a < ends]
    for seq, event in events:
        gone = [(a, b) for a, b in deleted if a < seq]
        if gone:
            deleted = deleted[len(gone) :]
            story.steps.extend(_gap_steps(gone, "between these steps" if story.steps else "before these steps"))
        story.steps.append(_step(state, life, command_id, seq, event, events))
    if deleted:
        story.steps.extend(_gap_steps(deleted, "after these steps" if events else "where its steps would be"))
    for seq, event in events:
        if event.type == "command.started" and decision_problem(state, command_id, event, seq) is None:
            before = [(s, e) for s, e in events if s < seq]
            story.problems.extend(f"seq {seq}: {p}" for p in judge_execution(state, command_id, before, event, seq))
    return story


def _route(subject: str) -> tuple[str, ...]:
    """What decides which reader takes an event from ``subject`` and how: the command and the step
    (``sym.cmd.<id>.<step>``), the registry (``sym.reg.…``), requests (``sym.in.…``)."""
    parts = subject.split(".")
    if parts[:2] == ["sym", "cmd"]:
        return tuple(parts) if len(parts) == 4 else (*parts[:2], "(not a step's subject)")
    return tuple(parts[:2])


def _gap_steps(deleted: list[tuple[int, int]], where: str) -> list[Step]:
    """One step per run of consecutive deleted sequences, saying what may be missing there."""
    runs: list[list[int]] = []
    for start, end in deleted:
        if runs and start == runs[-1][1] + 1:
            runs[-1][1] = end
        else:
            runs.append([start, end])
    steps = []
    for start, end in runs:
        count = end - start + 1
        which = f"event #{start} was" if count == 1 else f"events #{start}–#{end} ({count}) were"
        how = "purged from the beginning of the log" if start == 1 else f"deleted from the log {where}"
        text = (
            f"{which} {how}: it may have been one of this command's (its proposal, an approval, its start or "
            "its outcome, say), and the story is told without it (`symbiote audit` names every deletion)"
        )
        steps.append(Step("gap", start, None, None, text, False, {"deleted": [start, end]}))
    return steps


def _step(
    state: RegistryState,
    life: CommandLife,
    command_id: str,
    seq: int,
    event: Envelope,
    events: list[tuple[int, Envelope]],
) -> Step:
    verdict = state.keyring.verify(event, seq)
    signed = verdict.ok
    body = event.body
    kind = event.type.rsplit(".", 1)[1]
    who = event.actor
    # a decision whose signature holds, yet which is not this command's (another key, another
    # command's copied here) is shown and marked, not told as a step; one whose signature fails is
    # told as it says, marked ✗
    problem = decision_problem(state, command_id, event, seq) if signed and event.type in RUNTIME_DECISIONS else None
    if problem is not None:
        return Step("note", seq, event.at, who, f"{event.type} that does not count: {problem}", False, {})
    if event.type == "command.proposed":
        text = (
            f"{who} proposed {body.get('command')} {json.dumps(jsonable(body.get('args')), ensure_ascii=False)} "
            f"with confidence {body.get('confidence')}"
        )
        details = {"event_id": event.id, "verified": verdict.principals}
        return Step("proposal", seq, event.at, who, text, signed, details)
    if event.type == "command.approval_requested":
        principals = body.get("principals")
        listed = ", ".join(map(str, principals)) if isinstance(principals, list) else repr(principals)
        text = f"approval requested: needs {body.get('needs')} of {listed}"
        return Step("approval_request", seq, event.at, who, text, signed, {"expires_at": body.get("expires_at")})
    if event.type in ("command.approved", "command.rejected"):
        counted = (life.approvals.get(who) == seq) if event.type == "command.approved" else life.rejected_by == who
        counted = counted and event.id in life.approval_ids
        verb = "approved" if event.type == "command.approved" else "rejected"
        text = f"{who} {verb}" + ("" if counted else " (did not count)")
        kind = "approval" if verb == "approved" else "rejection"
        return Step(kind, seq, event.at, who, text, signed and counted, {}, signed=signed)
    if event.type == "command.started":
        sandbox = body.get("sandbox") if isinstance(body.get("sandbox"), dict) else {}
        assert isinstance(sandbox, dict)
        return Step("execution", seq, event.at, who, f"started in {sandbox.get('backend', '?')}", signed, sandbox)
    if event.type in ("command.succeeded", "command.failed"):
        output = body.get("output") if isinstance(body.get("output"), dict) else {}
        assert isinstance(output, dict)
        said = output_said(output) or ""
        text = f"{kind} with exit code {body.get('exit_code')} after {body.get('duration_ms')} ms: {str(said)[:300]!r}"
        return Step("result", seq, event.at, who, text, signed, {"output": output})
    if event.type == "command.denied":
        ending = event.cause == command_id
        text = f"denied ({body.get('reason')}): {body.get('detail')}" if ending else f"note: {body.get('detail')}"
        return Step("denial" if ending else "note", seq, event.at, who, text, signed, {"reason": body.get("reason")})
    if event.type == "command.clarify":
        return Step("question", seq, event.at, who, f"{who} asked back: {body.get('question')!r}", signed, {})
    if event.type == "command.suggested":
        text = f"{who} found no command for {body.get('request')!r} and suggested one be defined"
        return Step("suggestion", seq, event.at, who, text, signed, {"suggestion": jsonable(body.get("suggestion"))})
    return Step(kind, seq, event.at, who, event.type, signed, {})


# -- HTML ------------------------------------------------------------------------------------
_KIND_WORDS = {
    "gap": "Missing events",
    "truncated": "Log cut short",
    "rewritten": "Log rewritten",
    "stream_config": "Log set up to misfile events",
    "unreadable": "Unreadable message",
    "signature": "Signature does not hold",
    "wrong_role": "Signed by the wrong kind of key",
    "registry": "Refused registry change",
    "policy": "Ran without permission",
    "checkpoint": "Checkpoint does not match",
    "fork": "Checkpoint chain broken",
    "missing_checkpoint": "Checkpoint deleted from the log",
    "edited_checkpoint": "Checkpoint edited",
    "unfiled_checkpoint": "Checkpoint without an outside copy",
    "checkpoint_file": "Problem with a checkpoint file",
    "uncovered": "Not yet covered by a checkpoint",
    "no_checkpoints": "No checkpoints yet",
    "replayed": "Event seen twice",
    "malformed": "Badly formed event",
    "subject": "Event filed in the wrong place",
    "unknown_type": "Unknown kind of event",
    "owner": "Not this installation's log",
}


_REASON_WORDS = {
    "rejected_by_user": "rejected",
    "expired": "no answer came in time",
    "invalid_args": "its details were not valid",
    "unknown_command": "there is no such command",
    "not_permitted": "not permitted",
    "bad_signature": "a signature did not hold",
    "unknown_key": "signed by an unknown key",
    "revoked_key": "signed by a revoked key",
    "wrong_role": "signed by the wrong kind of key",
    "approval_digest_mismatch": "the approval was for something else",
    "outcome_unknown": "it may have run, but its result was lost",
    "malformed": "badly formed",
    "duplicate": "asked twice",
}


def _refusal_words(refusal: Refusal) -> str:
    if refusal.reason == "rejected_by_user" and refusal.rejected_by:
        return f"rejected by {refusal.rejected_by}"
    words = _REASON_WORDS.get(refusal.reason, refusal.reason)
    return f"{words}: {refusal.detail}" if refusal.detail and refusal.reason != "rejected_by_user" else words


def _sure(confidence: Any) -> str:
    """How sure the agent was, for people: ``0.8684`` → ``87 % sure``."""
    if isinstance(confidence, (int, float)) and not isinstance(confidence, bool) and 0 <= confidence <= 1:
        return f"{round(confidence * 100)} % sure"
    return f"sure at {confidence}"


def human_time(ms: int | None) -> str:
    """A signed time (ms since 1970) for people, in UTC; one no calendar holds is said as it is."""
    if not isinstance(ms, int):
        return "—"
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):  # a time no calendar holds (the signer chose it)
        return f"{ms} ms after 1970"


def _asked_cell(who: str | None, request: str | None) -> str:
    """HTML: who asked, and (in a quieter line) what they said."""
    if who is None:
        return "not found in the log"
    said = f"<br><small>“{html.escape(request)}”</small>" if request else ""
    return html.escape(who) + said


def _args_words(args: Any) -> str:
    """A command's arguments for people: ``name: value`` pairs, each value as text, cut at 120 characters."""
    if isinstance(args, dict):
        parts = [f"{k}: {v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}" for k, v in args.items()]
        text = "; ".join(p.replace("\n", " ").strip() for p in parts)
    else:
        text = json.dumps(args, ensure_ascii=False)
    return text if len(text) <= 120 else text[:119] + "…"


def write_html(report: AuditReport, path: Path) -> None:
    """Write a self-contained HTML page for people: the verdict first, then a table of findings."""
    esc = html.escape
    first = report.first_failure
    when = datetime.fromtimestamp(report.checked_at / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows_kept = "not consulted" if report.checkpoint_rows is None else str(report.checkpoint_rows)
    if first is None:
        verdict = "Everything checks out"
        if not report.checkpoints:
            sealed = (
                " There are no signed checkpoints yet, so nothing proves that no event was deleted or changed "
                "before this check."
            )
        elif any(f.kind == "uncovered" for f in report.findings):
            sealed = (
                f" The log matches its signed checkpoints, which cover it up to event #{report.covered_through}; "
                "the newest events are not covered yet."
            )
        else:
            sealed = " The log matches its signed checkpoints, which cover every event (but themselves)."
        notes = len(report.findings) + sum(report.omitted.values())
        plural = notes != 1
        noted = (
            f" {notes} note{'s' if plural else ''} below {'are' if plural else 'is'} worth a look, though none is "
            "a problem."
            if notes
            else ""
        )
        verdict_detail = (
            f"All {report.messages} events in the log were checked. Every signature holds and every command that ran "
            f"was allowed to run.{sealed}{noted}"
        )
        colour = "#1b7f3b"
    else:
        where = f"event #{first.seq}" if first.seq is not None else "the checkpoint copies"
        verdict = "Problems found"
        verdict_detail = (
            f"The first problem is at {where}: {first.message}. Keep this report and the data directory as they "
            "are, and show them to whoever looks after the assistant."
        )
        colour = "#b3261e"
    rows = []
    for finding in report.findings:
        label = "Problem" if finding.severity == "fail" else "Note"
        rows.append(
            "<tr class='{cls}'><td>{seq}</td><td>{label}</td><td>{kind}</td><td>{msg}</td></tr>".format(
                cls=finding.severity,
                seq=esc(str(finding.seq)) if finding.seq is not None else "—",
                label=label,
                kind=esc(_KIND_WORDS.get(finding.kind, finding.kind)),
                msg=esc(finding.message),
            )
        )
    ran_rows = []
    for run in report.executions:
        approved = ", ".join(run.approved_by) or ("not needed" if run.allowed else "nobody")
        proposer = f"{run.proposed_by} ({_sure(run.confidence)})" if run.proposed_by else "nobody"
        ran_rows.append(
            "<tr class='{cls}'><td>{seq}</td><td>{when}</td><td>{asked}</td><td>{what}</td><td>{who}</td>"
            "<td>{approved}</td><td>{ok}</td><td>{result}</td></tr>".format(
                cls="" if run.allowed else "fail",
                seq=run.seq,
                when=esc(human_time(run.at)),
                asked=_asked_cell(run.asked_by, run.request),
                what=esc(f"{run.command} {_args_words(run.args)}"),
                who=esc(proposer),
                approved=esc(approved),
                ok="yes" if run.allowed else "NO",
                result=esc(run.outcome or "no result recorded"),
            )
        )
    shown = len(report.executions)
    ran = (
        f"<p>The {'latest ' if shown < report.commands_executed else ''}{shown} of {report.commands_executed} "
        "commands that were started: when, who asked for it and how, what ran, which agent proposed it (and how "
        "sure it was), who approved it, and how it ended.</p><table><thead><tr><th>Event #</th><th>When</th>"
        "<th>Asked by</th><th>What ran</th><th>Proposed by</th><th>Approved by</th><th>Allowed</th>"
        "<th>Result</th></tr></thead><tbody>" + "".join(ran_rows) + "</tbody></table>"
        if ran_rows
        else "<p>No command was started.</p>"
    )
    refused_rows = [
        "<tr><td>{seq}</td><td>{when}</td><td>{asked}</td><td>{what}</td><td>{why}</td></tr>".format(
            seq=refusal.seq,
            when=esc(human_time(refusal.at)),
            asked=_asked_cell(refusal.asked_by, refusal.request),
            what=esc(refusal.command or "an unknown command"),
            why=esc(_refusal_words(refusal)),
        )
        for refusal in report.refusals
    ]
    refused = (
        "<p>Commands that ended without running: refused by the runtime, or rejected by a person.</p>"
        "<table><thead><tr><th>Event #</th><th>When</th><th>Asked by</th><th>Command</th><th>Why it did not run"
        "</th></tr></thead><tbody>" + "".join(refused_rows) + "</tbody></table>"
        if refused_rows
        else "<p>No command was refused or rejected.</p>"
    )
    omitted = "".join(
        f"<p>{n} more finding(s) of the kind “{esc(_KIND_WORDS.get(k, k))}” are not listed.</p>"
        for k, n in report.omitted.items()
    )
    table = (
        "<table><thead><tr><th>Event #</th><th>Severity</th><th>What</th><th>Details</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        if rows
        else "<p>Nothing to report.</p>"
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>symbiote audit report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; color: #222; line-height: 1.5; }}
.verdict {{ background: {colour}; color: white; padding: 1rem 1.5rem; border-radius: .5rem; }}
.verdict h1 {{ margin: 0 0 .3rem 0; }}
table {{ border-collapse: collapse; width: 100%; margin-top: 1rem; }}
th, td {{ border: 1px solid #ccc; padding: .4rem .6rem; text-align: left; vertical-align: top; }}
tr.fail td {{ background: #fdecea; }} tr.warn td {{ background: #fff8e1; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }}
dt {{ font-weight: 600; }}
</style></head><body>
<div class="verdict"><h1>{esc(verdict)}</h1><p>{esc(verdict_detail)}</p></div>
<h2>What was checked</h2>
<dl>
<dt>Checked</dt><dd>{esc(when)}</dd>
<dt>Checkpoint copies</dt><dd>{esc(report.checkpoint_dir) if report.checkpoint_dir else "no folder given"}</dd>
<dt>Events in the log</dt><dd>{report.messages} (numbered {report.stream_first_seq} to {report.stream_last_seq})</dd>
<dt>Signatures checked</dt><dd>{report.signatures_checked}, each against the keys registered at that point</dd>
<dt>Commands that ran</dt><dd>{report.commands_executed}, each checked against the approval rules in force</dd>
<dt>Signed checkpoints</dt><dd>{report.checkpoints} in the log; copies kept outside it: {report.checkpoint_files}
in files, {esc(rows_kept)} in the database</dd>
<dt>Covered by checkpoints</dt><dd>every event up to #{report.covered_through} (a checkpoint does not cover
itself)</dd>
</dl>
<p>A <b>signature</b> proves who wrote an event. A <b>checkpoint</b> is a signed fingerprint of all events
so far, kept both in the log and in separate files, so that deleting or changing old events shows up.
“Problem” rows need attention; “Note” rows are for information.</p>
<h2>Findings</h2>
{table}
{omitted}
<h2>What ran, and who allowed it</h2>
{ran}
<h2>What was refused or rejected</h2>
{refused}
</body></html>
"""
    write_private(path, page.encode())  # it holds what the person asked: theirs to share
