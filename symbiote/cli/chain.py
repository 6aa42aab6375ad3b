"""Reading the log for people: verified event rows and the chain one input started."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from symbiote.bus.envelope import Envelope, from_wire
from symbiote.bus.events import body_problem
from symbiote.bus.stream import Bus, StoredMsg
from symbiote.errors import DecodeError
from symbiote.projections.jsontext import jsonable
from symbiote.registry.state import RegistryState, is_registry_change

__all__ = ["WAIT_STATUS", "EventRow", "follow_chain", "rows", "wait_status"]


@dataclass
class EventRow:
    """One stored message, decoded and verified against the registry as of its position."""

    seq: int
    subject: str
    event: Envelope | None
    verified: list[str]
    problem: str | None

    def as_json(self) -> dict[str, Any]:
        event = self.event
        return {
            "seq": self.seq,
            "subject": self.subject,
            "id": event.id if event else None,
            "type": event.type if event else None,
            "actor": event.actor if event else None,
            "at": event.at if event else None,
            "corr": event.corr if event else None,
            "cause": event.cause if event else None,
            "verified": self.verified,
            "problem": self.problem,
            "body": jsonable(event.body) if event else None,
        }


async def rows(bus: Bus, *, from_seq: int = 1, follow: bool = False, subject: str = "sym.>") -> AsyncIterator[EventRow]:
    """Every event from ``from_seq`` with its signatures verified at its position.

    The registry is folded from the start of the log so verification is exact even when
    the listing starts later.
    """
    state = RegistryState()
    if from_seq > 1:
        async with contextlib.aclosing(bus.read("sym.reg.>", from_seq=1)) as registry:
            async for msg in registry:
                if msg.seq >= from_seq:
                    break
                _fold(state, msg)
    source = bus.follow(subject, from_seq=from_seq) if follow else bus.read(subject, from_seq=from_seq)
    expected = from_seq  # the whole log has every sequence: a skipped one was deleted
    async with contextlib.aclosing(source) as messages:
        async for msg in messages:
            if subject == "sym.>" and msg.seq > expected:
                yield _missing(expected, msg.seq - 1)
            expected = msg.seq + 1
            yield _row(state, msg)


def _missing(first: int, last: int) -> EventRow:
    """A row for sequences the log no longer holds."""
    where = f"#{first}" if first == last else f"#{first}–#{last}"
    words = "was" if first == last else "were"
    return EventRow(first, "", None, [], f"{where} {words} deleted from the log (or purged): see `symbiote audit`")


def _fold(state: RegistryState, msg: StoredMsg) -> None:
    try:
        event = from_wire(msg.data)
    except DecodeError:
        return
    if is_registry_change(msg.subject, event.type):
        state.apply(event, msg.seq)


def _row(state: RegistryState, msg: StoredMsg) -> EventRow:
    try:
        event = from_wire(msg.data)
    except DecodeError as exc:
        return EventRow(msg.seq, msg.subject, None, [], f"undecodable: {exc}")
    if is_registry_change(msg.subject, event.type):
        verdict = state.apply(event, msg.seq)
        # a change whose every signature holds, yet refused (signed by a key of the wrong role, a
        # definition that does not fit): who signed it shows
        signed = bool(verdict.checks) and all(check.ok for check in verdict.checks)
    else:
        verdict = state.keyring.verify(event, msg.seq)
        signed = verdict.ok
    problem = None if verdict.ok else f"{verdict.reason}: {verdict.detail}"
    if problem is None:  # signed as it says, yet a body every reader refuses: shown as refused
        problem = body_problem(event.type, event.body, event.id)
    return EventRow(msg.seq, msg.subject, event, verdict.principals if signed else [], problem)


STOP_TYPES = frozenset({"command.clarify", "command.suggested"})


async def follow_chain(
    bus: Bus, input_id: str, from_seq: int, *, timeout_s: float, until_approval: bool = False
) -> AsyncIterator[EventRow]:
    """Events of the chain that input ``input_id`` started, until it ends (or ``timeout_s``)."""
    commands: set[str] = set()
    queue: asyncio.Queue[EventRow] = asyncio.Queue()

    async def pump() -> None:
        async for row in rows(bus, from_seq=from_seq, follow=True, subject="sym.cmd.>"):
            await queue.put(row)

    task = asyncio.create_task(pump())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                row = await asyncio.wait_for(queue.get(), remaining)
            except TimeoutError:
                return
            event = row.event
            if event is None:
                continue
            command_id = event.id if event.type == "command.proposed" else str(event.body.get("command_id", ""))
            if event.corr == input_id or event.cause == input_id:
                commands.add(command_id)
            if command_id not in commands:
                continue
            yield row
            terminal = event.type in ("command.succeeded", "command.failed") or (
                event.type == "command.denied" and event.cause == command_id
            )
            if terminal or event.type in STOP_TYPES:
                return
            if event.type == "command.approval_requested" and not until_approval:
                return
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# what ``--wait`` exits with, by the last event it saw (README: "Exit status of --wait")
WAIT_STATUS = {
    "command.succeeded": 0,
    "command.approval_requested": 0,  # waiting for a person: nothing went wrong
    "command.failed": 1,
    "command.denied": 1,
    "command.clarify": 3,  # the agent asked back, or found no command: nothing ran
    "command.suggested": 3,
}
TIMED_OUT = 124  # as timeout(1) says it


def wait_status(last: EventRow | None) -> int:
    """The exit status of a ``--wait`` whose last event was ``last`` (None: none came): 0 when
    the command succeeded or waits for an approval, 1 when it failed or was denied, 3 when the
    agent asked back or suggested a command, 124 when it had not ended in time."""
    if last is None or last.event is None:
        return TIMED_OUT
    return WAIT_STATUS.get(last.event.type, TIMED_OUT)
