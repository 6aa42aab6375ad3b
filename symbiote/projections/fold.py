"""The fold: stored messages, in stream order, to the rows of every projection table.

:class:`Folder` keeps the registry state (keys, definitions, policy) folded in the same pass,
so each event is verified and judged as of its own position, and the events of each
command, so a command's row is always :func:`~symbiote.registry.policy.fold_command` of
everything on ``sym.cmd.<id>.>`` up to the position folded. Nothing here reads a clock or
draws random numbers: the rows are a function of the stream alone, which is what lets a
replay prove itself equal to the live tables.

A folder that starts after the head of the log (a projector resuming from its checkpoint,
or ``replay --from``) first folds the registry up to its start (:meth:`Folder.prime`) and
reads the earlier events of any command it meets from the stream (:meth:`Folder.prepare`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from symbiote.bus.envelope import Envelope, from_wire
from symbiote.bus.ids import is_event_id
from symbiote.bus.stream import Bus
from symbiote.errors import DecodeError
from symbiote.projections.jsontext import json_text, jsonable, pg_text
from symbiote.projections.verify import CachedKeyring, Decoded, reading, verdict_at
from symbiote.registry.policy import CommandLife, Denial, check_approval, fold_command, fold_event, signed_late
from symbiote.registry.state import REGISTRY_TYPES, RegistryState, is_registry_change
from symbiote.signers.keyring import Verdict

__all__ = [
    "APPROVAL_COLUMNS",
    "COMMAND_COLUMNS",
    "EVENT_COLUMNS",
    "KEY_COLUMNS",
    "MEMORY_COLUMNS",
    "REGISTRY_COLUMNS",
    "TIMELINE_EDGE",
    "Folder",
    "MemoryRow",
    "RecentCommands",
    "Rows",
    "command_histories",
    "command_id_of",
    "jsonable",
    "outcome_text",
    "output_said",
    "pg_text",
]

EVENT_COLUMNS = (
    "seq",
    "subject",
    "event_id",
    "type",
    "at",
    "actor",
    "corr",
    "cause",
    "command_id",
    "body",
    "signers",
    "problem",
    "raw_sha256",
)
COMMAND_COLUMNS = (
    "command_id",
    "state",
    "command",
    "args",
    "confidence",
    "agent",
    "corr",
    "input_id",
    "proposal_seq",
    "proposed_at",
    "proposal_problem",
    "approval_mode",
    "quorum",
    "requested_seq",
    "approval_expires_at",
    "approvals",
    "rejected_by",
    "denial_reason",
    "denial_detail",
    "started_seq",
    "starts",
    "terminal_seq",
    "exit_code",
    "duration_ms",
    "output",
    "last_seq",
    "updated_at",
    "timeline",
)
APPROVAL_COLUMNS = (
    "seq",
    "command_id",
    "event_id",
    "principal",
    "decision",
    "at",
    "signers",
    "counted",
    "reason",
    "detail",
)
KEY_COLUMNS = ("kid", "principal", "role", "registered_seq", "revoked_seq")
REGISTRY_COLUMNS = (
    "name",
    "defined_seq",
    "policy_seq",
    "executor",
    "approval_mode",
    "quorum",
    "description",
    "definition",
)
MEMORY_COLUMNS = ("seq", "kind", "event_id", "command_id", "actor", "corr", "at", "text", "embedding")
INPUT_ROLES = frozenset({"user", "owner", "runtime"})
MEMORY_SKIP_COMMANDS = frozenset({"memory.search"})  # its outcomes quote memory; do not remember them
TIMELINE_EDGE = 50
"""A command's stored timeline keeps its first and last this many events (see :func:`_timeline`)."""
_INT64_MAX = 2**63 - 1
EarlierLookup = Callable[[list[str], int], Awaitable[set[str]]]
"""``(command ids, before seq) -> the ids that have an event before that sequence``."""


def _int64(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if -_INT64_MAX - 1 <= value <= _INT64_MAX else None


def _opt(value: str | None) -> str | None:
    return pg_text(value) if value is not None else None


def command_id_of(subject: str) -> str | None:
    """The command id of a ``sym.cmd.<id>.<phase>`` subject, else None.

    Only an event id (a UUID) is a command id: any other token (a wildcard, a NUL, a huge one)
    on a subject anyone connected to NATS can publish on joins no command.
    """
    if not subject.startswith("sym.cmd."):
        return None
    parts = subject.split(".")
    return parts[2] if len(parts) >= 4 and is_event_id(parts[2]) else None


def output_said(output: Any) -> str | None:
    """What a command's output says, for people: its stdout, text, error or stderr, else the texts
    of its hits (``memory.search``); None when it says none of these."""
    if not isinstance(output, dict):
        return None
    said = output.get("stdout") or output.get("text") or output.get("error") or output.get("stderr")
    if isinstance(said, str):
        return said
    hits = output.get("hits")
    if isinstance(hits, list) and hits:
        texts = [str(hit.get("text")) for hit in hits if isinstance(hit, dict)]
        return f"{len(hits)} found: " + " | ".join(texts)
    return None


def outcome_text(command: str, args: Any, kind: str, body: dict[str, Any]) -> str:
    """The remembered sentence of one outcome: what ran, how it ended, what it said."""
    output = body.get("output") if isinstance(body.get("output"), dict) else {}
    said = output_said(output)
    if said is None:
        said = json.dumps(jsonable(output), ensure_ascii=False, sort_keys=True) if output else ""
    status = "succeeded" if kind == "command.succeeded" else f"failed (exit {body.get('exit_code')})"
    shown_args = json.dumps(jsonable(args), ensure_ascii=False, sort_keys=True)
    return pg_text(f"{command} {shown_args} {status}: {said.strip()}")[:2000]


async def command_histories(bus: Bus, ids: Sequence[str], before: int) -> dict[str, list[tuple[int, Envelope]]]:
    """The decodable events of each command in ``ids`` stored before ``before``, read from the stream."""
    limit = asyncio.Semaphore(32)

    async def load(cid: str) -> list[tuple[int, Envelope]]:
        events: list[tuple[int, Envelope]] = []
        subject = f"sym.cmd.{cid}.>"
        async with limit:
            msg = await bus.next_after(subject, 1)
            while msg is not None and msg.seq < before:
                with contextlib.suppress(DecodeError):  # unreadable: not part of the command's history
                    events.append((msg.seq, from_wire(msg.data)))
                msg = await bus.next_after(subject, msg.seq + 1)
        return events

    found = await asyncio.gather(*(load(cid) for cid in ids))
    return dict(zip(ids, found, strict=True))


@dataclass(slots=True)
class MemoryRow:
    """A text to remember (its embedding is computed after the fold, in bulk)."""

    seq: int
    kind: str
    event_id: str
    command_id: str | None
    actor: str
    corr: str | None
    at: int
    text: str


@dataclass
class Rows:
    """Everything one batch changes; written in one transaction with the checkpoint."""

    first_seq: int = 0
    last_seq: int = 0
    count: int = 0
    events: list[tuple[Any, ...]] = field(default_factory=list)
    commands: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    approvals: list[tuple[Any, ...]] = field(default_factory=list)
    keys: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    registry: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    memory: list[MemoryRow] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.events or self.commands or self.approvals or self.keys or self.registry or self.memory)

    def absorb(self, later: Rows) -> None:
        """Add the rows of the batch folded right after this one (a later row of the same key wins)."""
        if later.count:
            if not self.count:
                self.first_seq = later.first_seq
            self.last_seq = later.last_seq
            self.count += later.count
        self.events += later.events
        self.commands.update(later.commands)
        self.approvals += later.approvals
        self.keys.update(later.keys)
        self.registry.update(later.registry)
        self.memory += later.memory


V = TypeVar("V")


class RecentCommands(Generic[V]):
    """Per-command state of the ``size`` most recently active commands; of the others only the
    ids are kept (:attr:`evicted`), so that their state can be read back when they go on."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.evicted: set[str] = set()
        self._items: OrderedDict[str, V] = OrderedDict()

    def __contains__(self, command_id: str) -> bool:
        return command_id in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, command_id: str) -> V | None:
        return self._items.get(command_id)

    def touch(self, command_id: str, make: Callable[[], V]) -> V:
        """The command's state (``make()`` for a new one), marked as the most recently active."""
        state = self._items.get(command_id)
        if state is None:
            state = self._items[command_id] = make()
        else:
            self._items.move_to_end(command_id)
        return state

    def put(self, command_id: str, state: V) -> None:
        """Keep ``state`` for the command (e.g. read back after it was evicted)."""
        self._items[command_id] = state
        self.evicted.discard(command_id)

    def evict(self) -> None:
        """Forget the state of the least recently active commands beyond ``size``."""
        while len(self._items) > self.size:
            command_id, _ = self._items.popitem(last=False)
            self.evicted.add(command_id)


@dataclass
class _Track:
    """One command's life folded so far (its decodable events, in order), and the signature
    problem of each event we verified."""

    life: CommandLife
    problems: dict[int, str | None] = field(default_factory=dict)


def _problem(verdict: Verdict) -> str | None:
    return None if verdict.ok else f"{verdict.reason}: {verdict.detail}"


class Folder:
    """Folds decoded messages into :class:`Rows`, keeping the registry and command histories.

    The event histories of the ``cache_size`` most recently active commands are kept in memory;
    of older commands only the id is kept, and one that goes on is read back from the stream
    (:meth:`prepare`). The bound keeps a long-running projector's memory, and the garbage
    collector's full passes over it, small.
    """

    def __init__(self, bus: Bus | None = None, *, cache_size: int = 10_000, memory: bool = True) -> None:
        self.bus = bus
        self.keyring = CachedKeyring()
        self.state = RegistryState(keyring=self.keyring)
        self.memory = memory
        self.position = 0  # last stream sequence folded (or primed)
        self.origin = 1  # first sequence this folder saw every message from
        self._tracks: RecentCommands[_Track] = RecentCommands(cache_size)
        self._touched_kids: set[str] = set()
        self._touched_names: set[str] = set()

    # -- starting after the head ------------------------------------------------------------
    async def prime(self, through: int) -> None:
        """Fold the registry events at or before ``through`` (the position already projected)."""
        if through > 0:
            if self.bus is None:
                raise DecodeError("a folder starting after the head of the log needs the bus")
            async with reading(self.bus, "sym.reg.>", from_seq=1) as messages:
                async for msg in messages:
                    if msg.seq > through:
                        break
                    try:
                        event = from_wire(msg.data)
                    except DecodeError:
                        continue
                    if event.type in REGISTRY_TYPES:
                        self.state.apply(event, msg.seq)
        self.state.applied_through = max(self.state.applied_through, through)
        self.position = through
        self.origin = through + 1
        self._touched_kids = set(self.state.keyring.keys)
        self._touched_names = set(self.state.commands) | set(self.state.policies)

    async def prepare(self, batch: Sequence[Decoded], *, earlier: EarlierLookup | None = None) -> None:
        """Load from the stream the earlier events of commands in ``batch`` that this folder lacks.

        ``earlier(ids, before)`` may say which of ``ids`` have any event before ``before`` (the
        folder's origin), e.g. from the projection's own events table; only those, and the
        commands evicted from the cache, are then read from the stream.
        """
        if not batch or self.bus is None:
            return
        first = batch[0].seq
        unseen: dict[str, None] = {}
        wanted: list[str] = []
        for item in batch:
            cid = command_id_of(item.subject)
            if cid is None or cid in self._tracks or cid in unseen:
                continue
            if cid in self._tracks.evicted:
                wanted.append(cid)
                unseen[cid] = None
            elif self.origin > 1:
                unseen[cid] = None
        candidates = [cid for cid in unseen if cid not in self._tracks.evicted]
        if candidates:
            if earlier is None:
                wanted.extend(candidates)
            else:
                known = await earlier(candidates, self.origin)
                wanted.extend(cid for cid in candidates if cid in known)
                for cid in candidates:
                    if cid not in known:
                        self._tracks.put(cid, _Track(CommandLife(cid)))  # nothing before the origin: start empty
        if not wanted:
            return
        for cid, events in (await command_histories(self.bus, wanted, first)).items():
            self._tracks.put(cid, _Track(fold_command(cid, events, self.state)))

    # -- folding ----------------------------------------------------------------------------
    def fold(self, batch: Sequence[Decoded]) -> Rows:
        """Fold ``batch`` (ascending sequences, crypto results filled) and return the rows it changes."""
        rows = Rows()
        touched: dict[str, None] = {}
        for item in batch:
            if item.seq <= self.position:
                continue  # already folded (a redelivery)
            self.position = item.seq
            if not rows.first_seq:
                rows.first_seq = item.seq
            rows.last_seq = item.seq
            rows.count += 1
            self._fold_one(item, rows, touched)
        self.state.applied_through = max(self.state.applied_through, self.position)
        for cid in touched:
            track = self._tracks.get(cid)
            if track is None:
                continue
            row = self._command_row(cid, track)
            if row is not None:
                rows.commands[cid] = row
        for kid in sorted(self._touched_kids):
            entry = self.state.keyring.keys.get(kid)
            if entry is not None:
                rows.keys[kid] = (
                    pg_text(kid),
                    pg_text(entry.principal),
                    pg_text(entry.role),
                    entry.registered_seq,
                    entry.revoked_seq,
                )
        for name in sorted(self._touched_names):
            row = self._registry_row(name)
            if row is not None:
                rows.registry[name] = row
        self._touched_kids.clear()
        self._touched_names.clear()
        self._tracks.evict()
        return rows

    def _fold_one(self, item: Decoded, rows: Rows, touched: dict[str, None]) -> None:
        cid = command_id_of(item.subject)
        event = item.event
        if event is None:
            rows.events.append(
                (
                    item.seq,
                    pg_text(item.subject),
                    _opt(item.peeked_id),
                    None,
                    None,
                    None,
                    None,
                    None,
                    _opt(cid),
                    None,
                    [],
                    pg_text(f"undecodable: {item.error}"),
                    item.raw_sha256,
                )
            )
            return
        if is_registry_change(item.subject, event.type):
            verdict = self.state.apply(event, item.seq)
            if verdict.ok:
                self._note_registry(event)
        else:
            verdict = verdict_at(self.state.keyring, event, item.seq, item.sig_ok)
        problem = _problem(verdict)
        body_ok = item.body_problem is None
        if problem is None:
            problem = item.body_problem
            if body_ok and item.subject.startswith("sym.reg.") and event.type not in REGISTRY_TYPES:
                problem = f"{event.type} is not a registry event"
        rows.events.append(
            (
                item.seq,
                pg_text(item.subject),
                event.id,
                pg_text(event.type),
                _int64(event.at),
                pg_text(event.actor),
                event.corr,
                event.cause,
                _opt(cid),
                item.body_json if item.body_json is not None else json_text(event.body),
                [pg_text(p) for p in verdict.principals] if verdict.ok else [],
                _opt(problem),
                item.raw_sha256,
            )
        )
        if cid is not None:
            track = self._tracks.touch(cid, lambda: _Track(CommandLife(cid)))
            if event.type in ("command.approved", "command.rejected"):
                rows.approvals.append(self._approval_row(cid, track, event, item.seq, verdict))
            fold_event(track.life, item.seq, event, self.state)
            track.problems[item.seq] = _problem(verdict)
            touched[cid] = None
            if self.memory and verdict.ok and event.type in ("command.succeeded", "command.failed"):
                self._remember_outcome(cid, track, event, item.seq, rows)
        elif self.memory and verdict.ok and body_ok and event.type.startswith("input."):
            text = event.body.get("text")
            if event.actor_role in INPUT_ROLES and isinstance(text, str) and text.strip():
                rows.memory.append(
                    MemoryRow(
                        item.seq,
                        "input",
                        event.id,
                        None,
                        pg_text(event.actor),
                        event.corr,
                        _int64(event.at) or 0,
                        pg_text(text.strip())[:8000],
                    )
                )

    def _note_registry(self, event: Envelope) -> None:
        body = event.body
        if event.type in ("key.registered", "key.revoked"):
            kid = body.get("kid")
            if isinstance(kid, str):
                self._touched_kids.add(kid)
        elif event.type == "command.defined":
            definition = body.get("definition")
            name = definition.get("name") if isinstance(definition, dict) else None
            if isinstance(name, str):
                self._touched_names.add(name)
        elif event.type == "policy.set":
            name = body.get("command")
            if isinstance(name, str):
                self._touched_names.add(name)

    # -- rows -------------------------------------------------------------------------------
    def _approval_row(self, cid: str, track: _Track, event: Envelope, seq: int, verdict: Verdict) -> tuple[Any, ...]:
        """Whether this approval counts, judged exactly as :func:`fold_event` will at ``seq``."""
        reason, detail = _judge_approval(self.state, track.life, event, seq)
        return (
            seq,
            pg_text(cid),
            event.id,
            pg_text(event.actor),
            "approve" if event.type == "command.approved" else "reject",
            _int64(event.at) or 0,
            [pg_text(p) for p in verdict.principals] if verdict.ok else [],
            reason is None,
            reason,
            _opt(detail),
        )

    def _remember_outcome(self, cid: str, track: _Track, event: Envelope, seq: int, rows: Rows) -> None:
        if event.actor_role != "runtime":
            return
        proposal = track.life.proposal
        if proposal is None:
            return
        command = proposal.body.get("command")
        if not isinstance(command, str) or command in MEMORY_SKIP_COMMANDS:
            return
        text = outcome_text(command, proposal.body.get("args"), event.type, event.body)
        rows.memory.append(
            MemoryRow(seq, "outcome", event.id, cid, pg_text(event.actor), event.corr, _int64(event.at) or 0, text)
        )

    def _proposal_problem(self, track: _Track, life: CommandLife) -> str | None:
        proposal = life.proposal
        if proposal is None:
            return None
        if life.proposal_seq in track.problems:
            problem = track.problems[life.proposal_seq]
        else:  # loaded from the stream: verify it here, once
            problem = _problem(self.state.keyring.verify(proposal, life.proposal_seq))
            track.problems[life.proposal_seq] = problem
        if problem is None and proposal.actor_role != "agent":
            problem = f"wrong_role: proposals come from agents, not {proposal.actor}"
        return problem

    def _command_row(self, cid: str, track: _Track) -> tuple[Any, ...] | None:
        life = track.life
        if life.proposal is None and life.terminal is None:
            return None  # a question, a suggestion, or stray events: no command to show
        state = str(life.summary()["state"])
        proposal = life.proposal
        body = proposal.body if proposal is not None else {}
        definition = life.definition
        counted = set(life.approvals.values())
        at_of = {seq: event.at for seq, event in life.events if seq in counted}
        approvals = [
            {"principal": principal, "seq": seq, "at": at_of.get(seq)}
            for principal, seq in sorted(life.approvals.items(), key=lambda item: item[1])
        ]
        terminal = life.terminal
        denial_reason = denial_detail = None
        exit_code = duration = output = None
        if terminal is not None and terminal.type == "command.denied":
            denial_reason = _opt(str(terminal.body.get("reason", "")))
            denial_detail = _opt(str(terminal.body.get("detail", "")))
        elif terminal is not None:
            exit_code = _int32(terminal.body.get("exit_code"))
            duration = _int64(terminal.body.get("duration_ms"))
            output = json_text(terminal.body.get("output", {}))
        confidence = body.get("confidence")
        command = body.get("command")
        timeline = _timeline(life.events)
        last_event = life.events[-1][1] if life.events else None
        return (
            pg_text(cid),
            state,
            pg_text(command) if isinstance(command, str) else None,
            json_text(body["args"]) if "args" in body else None,
            float(confidence) if isinstance(confidence, (int, float)) and not isinstance(confidence, bool) else None,
            pg_text(proposal.actor) if proposal is not None else None,
            proposal.corr if proposal is not None else None,
            proposal.cause if proposal is not None else None,
            life.proposal_seq or None,
            _int64(proposal.at) if proposal is not None else None,
            _opt(self._proposal_problem(track, life)),
            definition.approval.mode if definition is not None else None,
            definition.approval.quorum if definition is not None else None,
            life.requested_at_seq or None,
            _int64(life.approval_expires_at),
            json_text(approvals),
            _opt(life.rejected_by),
            denial_reason,
            denial_detail,
            life.started_seq or None,
            life.starts,
            life.terminal_seq or None,
            exit_code,
            duration,
            output,
            life.last_seq,
            _int64(last_event.at) if last_event is not None else None,
            json_text(timeline),
        )

    def _registry_row(self, name: str) -> tuple[Any, ...] | None:
        position = self.position + 1
        history = self.state.commands.get(name)
        found = history.entry_at(position) if history is not None else None
        definition = self.state.command_at(name, position)
        if found is None or definition is None:
            return None
        defined_seq = found[0]
        policies = self.state.policies.get(name)
        policy = policies.entry_at(position) if policies is not None else None
        policy_seq = policy[0] if policy is not None and policy[0] > defined_seq else None
        return (
            pg_text(name),
            defined_seq,
            policy_seq,
            pg_text(definition.executor),
            definition.approval.mode,
            definition.approval.quorum,
            pg_text(definition.description),
            json_text(definition.to_map()),
        )


def _int32(value: Any) -> int | None:
    number = _int64(value)
    return number if number is not None and -(2**31) <= number < 2**31 else None


def _timeline(events: list[tuple[int, Envelope]]) -> list[dict[str, Any]]:
    """A command's timeline: its events, or, past ``TIMELINE_EDGE`` twice, the first and the last
    ``TIMELINE_EDGE`` around one entry counting the others (a flood of junk on a command's subjects
    must not make every write of its row bigger: all of them are in ``events``)."""
    if len(events) <= 2 * TIMELINE_EDGE:
        return [_timeline_entry(seq, event) for seq, event in events]
    left_out = len(events) - 2 * TIMELINE_EDGE
    gap = {
        "seq": None,
        "type": "omitted",
        "at": None,
        "actor": None,
        "event_id": None,
        "note": f"{left_out} more events, from seq {events[TIMELINE_EDGE][0]} to {events[-TIMELINE_EDGE - 1][0]}: "
        "every one is in the events table",
    }
    head, tail = events[:TIMELINE_EDGE], events[-TIMELINE_EDGE:]
    return [*(_timeline_entry(s, e) for s, e in head), gap, *(_timeline_entry(s, e) for s, e in tail)]


def _timeline_entry(seq: int, event: Envelope) -> dict[str, Any]:
    body = event.body
    note: str | None = None
    if event.type == "command.denied":
        note = f"{body.get('reason')}: {str(body.get('detail', ''))[:300]}"
    elif event.type in ("command.succeeded", "command.failed"):
        note = f"exit {body.get('exit_code')}"
    elif event.type == "command.started":
        sandbox = body.get("sandbox")
        note = f"in {sandbox.get('backend')}" if isinstance(sandbox, dict) else None
    elif event.type == "command.proposed":
        note = f"{body.get('command')} (confidence {body.get('confidence')})"
    elif event.type == "command.approval_requested":
        note = f"needs {body.get('needs')} of {body.get('principals')}"
    return {"seq": seq, "type": event.type, "at": event.at, "actor": event.actor, "event_id": event.id, "note": note}


def _judge_approval(
    state: RegistryState, prefix: CommandLife, event: Envelope, seq: int
) -> tuple[str | None, str | None]:
    """(reason, detail) why an approval at ``seq`` does not count, or (None, None) when it counts.

    ``prefix`` is :func:`fold_command` of the command's events before ``seq``; the conditions
    are those under which ``fold_command`` skips an approval, in its order.
    """
    if prefix.proposal is None:
        return "no_proposal", "no valid proposal of this command precedes it"
    if prefix.definition is None:
        return "unknown_command", "the proposed command was not registered at the proposal's position"
    if not prefix.requested_at_seq:
        return "not_requested", "no approval was requested before it"
    if prefix.decided:
        return "decided", "the command had already started or ended"
    if event.id in prefix.approval_ids:
        return "duplicate", "the same approval event was counted before"
    if signed_late(prefix, event):
        return "expired", f"signed at {event.at}, after the approval request expired at {prefix.approval_expires_at}"
    check = check_approval(state, prefix.proposal, prefix.definition, event, seq)
    if isinstance(check, Denial):
        return check.reason, check.detail
    if check.approve and check.principal in prefix.approvals:
        return "already_approved", f"{check.principal} approved before (seq {prefix.approvals[check.principal]})"
    if not check.approve and prefix.rejected_by is not None:
        return "already_rejected", f"{prefix.rejected_by} rejected it before"
    return None, None
