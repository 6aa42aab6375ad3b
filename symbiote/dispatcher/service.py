"""The dispatcher: the permission gate and executor driver.

It consumes command events from one durable consumer (N dispatchers share it), decides from
the log alone (deny, request approval, run), claims execution exactly once with optimistic
concurrency on ``sym.cmd.<id>.>``, runs the command and publishes the outcome. Every
decision, including each refusal, is an event. After a crash, a command found started but
without an outcome is re-run only if its definition is idempotent; otherwise it is closed
with ``outcome_unknown``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from symbiote.bus.envelope import Envelope, from_wire, make_event
from symbiote.bus.ids import is_event_id, now_ms
from symbiote.bus.stream import Bus, Delivery, PullConsumer
from symbiote.dispatcher.executors import Executors, Outcome, fit_output
from symbiote.errors import BusError, ConflictError, DecodeError, SymbioteError
from symbiote.lifecycle import Service
from symbiote.registry.commands import load_life
from symbiote.registry.definition import CommandDefinition
from symbiote.registry.follower import RegistryFollower
from symbiote.registry.policy import (
    CommandLife,
    Denial,
    check_approval,
    check_proposal,
    decision_problem,
    eligible_approvers,
)
from symbiote.signers.keys import SigningKey, sign_event

__all__ = ["COMMAND_SUBJECTS", "Dispatcher"]

COMMAND_SUBJECTS = ("sym.cmd.*.proposed", "sym.cmd.*.approved", "sym.cmd.*.rejected")
ORPHAN_GRACE_S = 30.0
"""How long past its time limit a started command may go without an outcome before another
dispatcher takes its runner for dead (a message its runner left unacknowledged says so sooner)."""
MAX_DELIVERIES = 120
"""A message whose handling fails with a bus error this many times is given up (logged as an error)."""
log = structlog.get_logger("symbiote.dispatcher")


class _NotYet(Exception):
    """A started command without an outcome may still be running: look again at ``at`` (ms)."""

    def __init__(self, at: int) -> None:
        super().__init__(at)
        self.at = at


class Dispatcher(Service):
    """Long-running component: ``run()`` until ``shutdown()``, or ``async with``."""

    def __init__(
        self,
        bus: Bus,
        key: SigningKey,
        executors: Executors,
        *,
        durable: str = "dispatcher",
        batch: int = 256,
        clock: Callable[[], int] = now_ms,
        expiry_interval_s: float = 0.5,
        max_in_flight: int = 1024,
    ) -> None:
        if key.role != "runtime":
            raise SymbioteError("the dispatcher signs with a runtime key", principal=key.principal)
        self.bus = bus
        self.key = key
        self.executors = executors
        self.registry = RegistryFollower(bus)
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self.expiry_interval_s = expiry_interval_s
        self._consumer = PullConsumer(bus, durable, COMMAND_SUBJECTS, self._handle_batch, batch=batch)
        self._pending: dict[str, int] = {}  # command id -> approval expiry (ms)
        self._corr: dict[str, str | None] = {}  # command id -> its proposal's correlation id
        self._stop = asyncio.Event()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._running: set[str] = set()  # commands this dispatcher has started and not yet reported
        self._failure: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def prepare(self) -> None:
        """The durable consumer exists before ``async with`` returns (``run`` binds it again
        after a server restart, and a stop does not wait for that)."""
        await self._consumer.ensure()

    async def run(self) -> None:
        """Consume and decide until :meth:`shutdown`; re-raises the first failure of a sub-task."""
        tasks = [
            asyncio.create_task(self._consumer.run(), name="dispatcher-consumer"),
            asyncio.create_task(self._follow_requests(), name="dispatcher-requests"),
            asyncio.create_task(self._expire_loop(), name="dispatcher-expiry"),
        ]
        stop = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            if self._failure is not None:
                raise self._failure
        finally:
            self._consumer.shutdown()
            for task in [*tasks, stop]:
                task.cancel()
            for task in [*tasks, stop]:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._drain()

    async def _drain(self, timeout_s: float = 10.0) -> None:
        """Let commands in hand finish (their outcome is published); cancel what is left after ``timeout_s``."""
        if self._in_flight:
            _, pending = await asyncio.wait(set(self._in_flight), timeout=timeout_s)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def shutdown(self) -> None:
        """Stop consuming; idempotent."""
        self._stop.set()
        self._consumer.shutdown()

    # -- consuming -------------------------------------------------------------------------
    async def _handle_batch(self, batch: Sequence[Delivery]) -> None:
        if not batch:
            return
        await self.registry.ensure_through(max(d.seq for d in batch))
        for delivery in batch:
            await self._slots.acquire()
            task = asyncio.create_task(self._handle(delivery))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            # a bug, not bad input (bad input becomes denial events): stop and re-raise it from run()
            self._failure = task.exception()
            log.error("dispatch.crashed", error=repr(self._failure))
            self._stop.set()

    async def _handle(self, delivery: Delivery) -> None:
        parts = delivery.subject.split(".")
        command_id, phase = parts[2], parts[3]
        bound = log.bind(command_id=command_id, seq=delivery.seq)
        if not is_event_id(command_id):
            self.counts["rejected_unreadable"] += 1
            bound.warning("dispatch.rejected", reason="no readable command id", subject=delivery.subject)
            await delivery.ack()
            return
        try:
            if phase == "proposed":
                await self._on_proposal(delivery, command_id)
            else:
                await self._on_approval(delivery, command_id)
        except BusError as exc:
            # NATS unavailable even after retries: leave it unacked; it comes back (a message that
            # fails every time is given up, so that it cannot hold a place among the unacknowledged)
            self.counts["bus_errors"] += 1
            if delivery.num_delivered >= MAX_DELIVERIES:
                self.counts["given_up"] += 1
                bound.error("dispatch.given_up", error=str(exc), deliveries=delivery.num_delivered)
                await delivery.term()
                return
            bound.warning("dispatch.retry_later", error=str(exc))
            await delivery.nak(delay=1.0)
            return
        except _NotYet as later:  # started elsewhere, maybe still running: back when it would be overdue
            self.counts["running_elsewhere"] += 1
            await delivery.nak(delay=max(1.0, (later.at - self.clock()) / 1000))
            return
        await delivery.ack()

    async def _on_proposal(self, delivery: Delivery, command_id: str) -> None:
        first = await self.bus.next_after(f"sym.cmd.{command_id}.>", 1)
        is_first = first is not None and first.seq == delivery.seq
        try:
            event = from_wire(delivery.data)
        except DecodeError as exc:
            detail = f"undecodable proposal at seq {delivery.seq}: {exc}"
            if is_first:
                await self._close_unreadable(command_id, detail, delivery.seq)
            else:
                await self._note(command_id, "malformed", detail, terminal=False)
            return
        self._remember_corr(command_id, event.corr)
        if not is_first:
            await self._note(
                command_id,
                "duplicate",
                f"proposal {event.id} seen again at seq {delivery.seq}; first at seq {first.seq if first else '?'}",
                terminal=False,
            )
            return
        if event.id != command_id:
            await self._close_unreadable(command_id, "proposal id differs from its subject", delivery.seq)
            return
        if delivery.num_delivered == 1:
            # fast path: nothing can follow the proposal yet unless another writer raced us
            try:
                await self._decide(command_id, event, delivery.seq, delivery.seq, delivery)
                return
            except ConflictError:
                pass  # another writer appended after the proposal: the full path below reads the history
        await self._advance(command_id, delivery)

    async def _on_approval(self, delivery: Delivery, command_id: str) -> None:
        try:
            event = from_wire(delivery.data)
        except DecodeError as exc:
            await self._note(
                command_id, "malformed", f"undecodable approval at seq {delivery.seq}: {exc}", terminal=False
            )
            return
        life = await self._life(command_id)
        if life.proposal is None or life.definition is None:
            reason = "malformed" if life.proposal is None else "unknown_command"
            await self._note(command_id, reason, "approval for no known proposal", terminal=False, cause=event.id)
            return
        earlier = [s for s, e in life.events if e.id == event.id and s < delivery.seq]
        if earlier:
            await self._note(
                command_id,
                "duplicate",
                f"approval {event.id} replayed (first at seq {earlier[0]})",
                terminal=False,
                cause=event.id,
            )
            return
        check = check_approval(self.registry.state, life.proposal, life.definition, event, delivery.seq)
        if isinstance(check, Denial):
            await self._note(command_id, check.reason, check.detail, terminal=False, cause=event.id)
            return
        decided_before = (life.terminal_seq and life.terminal_seq < delivery.seq) or (
            life.started_seq and life.started_seq < delivery.seq
        )
        # an approval logged before the start but handled after it (a second tap, one more than the
        # quorum): the command runs already; only a redelivery may be the one its runner left behind
        running = life.started_seq and life.terminal is None and delivery.num_delivered <= 1
        if decided_before or running or not life.requested_at_seq or life.requested_at_seq > delivery.seq:
            await self._note(
                command_id,
                "duplicate",
                "approval for a command that is not awaiting approval",
                terminal=False,
                cause=event.id,
            )
            return
        expires = life.approval_expires_at
        if expires is not None and event.at > expires:
            await self._note(
                command_id, "expired", "approval signed after the request expired", terminal=False, cause=event.id
            )
            await self._advance(command_id, delivery)  # the note moved the log on: read it again
            return
        await self._advance(command_id, delivery, life)

    async def _close_unreadable(self, command_id: str, detail: str, first_seq: int) -> None:
        """End a command whose first message cannot be its proposal with a terminal denial, after
        whatever the log holds on its subjects by then (more may follow the first: a retry that
        expected only the first would lose every time), unless something has ended it already."""
        expect = first_seq
        for _ in range(10):
            try:
                await self._note(command_id, "malformed", detail, terminal=True, expect=expect)
                return
            except ConflictError:
                self.counts["conflicts"] += 1
                life = await self._life(command_id)  # its last_seq counts unreadable messages too
                if life.terminal is not None:
                    return  # ended already: by another dispatcher, or by this one before an ack was lost
                expect = life.last_seq
        log.warning("dispatch.gave_up_racing", command_id=command_id)

    # -- deciding --------------------------------------------------------------------------
    async def _life(self, command_id: str) -> CommandLife:
        life = await load_life(self.bus, self.registry, command_id)
        if life.proposal is not None:
            self._remember_corr(command_id, life.proposal.corr)
        return life

    async def _advance(self, command_id: str, delivery: Delivery | None, life: CommandLife | None = None) -> None:
        """Take the next step the command's history calls for; re-read it and retry after a race."""
        for _ in range(10):
            if life is None:
                life = await self._life(command_id)
            try:
                await self._step(life, delivery)
                return
            except ConflictError:
                self.counts["conflicts"] += 1
                life = None
                continue
        log.warning("dispatch.gave_up_racing", command_id=command_id)

    async def _step(self, life: CommandLife, delivery: Delivery | None) -> None:
        cid = life.command_id
        if life.proposal is None or life.terminal is not None:
            self._pending.pop(cid, None)
            return
        definition = life.definition
        if life.started_seq:
            self._pending.pop(cid, None)
            if cid in self._running:
                return  # this dispatcher runs it and will report
            overdue_at = _overdue_at(life)
            if (delivery is None or delivery.num_delivered <= 1) and self.clock() < overdue_at:
                # nothing says its runner died (a message it handled would come back unacknowledged)
                raise _NotYet(overdue_at)
            if definition is not None and definition.idempotent:
                await self._execute(life.proposal, definition, life.last_seq, delivery, rerun=True)
            else:
                await self._note(
                    cid,
                    "outcome_unknown",
                    "execution started but no outcome was recorded "
                    "(the dispatcher stopped); not re-run because the command is not idempotent",
                    terminal=True,
                    expect=life.last_seq,
                )
            return
        if life.requested_at_seq:
            expires = life.approval_expires_at or 0
            if life.rejected_by:
                self._pending.pop(cid, None)
                await self._note(
                    cid, "rejected_by_user", f"rejected by {life.rejected_by}", terminal=True, expect=life.last_seq
                )
            elif life.quorum_met() and definition is not None:
                self._pending.pop(cid, None)
                await self._execute(life.proposal, definition, life.last_seq, delivery)
            elif self.clock() >= expires:
                self._pending.pop(cid, None)
                await self._note(
                    cid,
                    "expired",
                    "no quorum of approvals before the request expired",
                    terminal=True,
                    expect=life.last_seq,
                )
            else:
                self._pending[cid] = expires
            return
        await self._decide(cid, life.proposal, life.proposal_seq, life.last_seq, delivery)

    async def _decide(
        self, cid: str, proposal: Envelope, proposal_seq: int, last_seq: int, delivery: Delivery | None
    ) -> None:
        state = self.registry.state
        now = self.clock()  # the start is stamped with the time the proposal was judged at
        definition, denial = check_proposal(state, proposal, proposal_seq, now)
        if denial is not None:
            await self._note(cid, denial.reason, denial.detail, terminal=True, expect=last_seq)
            return
        assert definition is not None
        policy = definition.approval
        if policy.mode == "none":
            await self._execute(proposal, definition, last_seq, delivery, at=now)
            return
        approvers = eligible_approvers(state, policy, proposal_seq)
        if len(approvers) < policy.quorum:
            await self._note(
                cid,
                "not_permitted",
                f"{definition.name} {policy.describe()}, but only {len(approvers)} such "
                "principal(s) hold a registered key",
                terminal=True,
                expect=last_seq,
            )
            return
        expires_at = self.clock() + policy.expires_in * 1000
        event = self._sign(
            make_event(
                "command.approval_requested",
                self.key.principal,
                {
                    "command_id": cid,
                    "digest": proposal.digest(),
                    "needs": policy.quorum,
                    "principals": approvers,
                    "expires_at": expires_at,
                },
                corr=proposal.corr,
                cause=cid,
            )
        )
        await self.bus.publish(event, expect_last_seq=last_seq, expect_subject=f"sym.cmd.{cid}.>")
        self._pending[cid] = expires_at
        self.counts["approval_requested"] += 1
        log.info("dispatch.approval_requested", command_id=cid, event_id=event.id, needs=policy.quorum)

    async def _execute(
        self,
        proposal: Envelope,
        definition: CommandDefinition,
        last_seq: int,
        delivery: Delivery | None,
        *,
        rerun: bool = False,
        at: int | None = None,
    ) -> None:
        """Claim with ``command.started`` (only one writer can), run, publish the outcome."""
        cid = proposal.id
        subject = f"sym.cmd.{cid}.>"
        started = self._sign(
            make_event(
                "command.started",
                self.key.principal,
                {"command_id": cid, "sandbox": self.executors.sandbox_info(definition)},
                corr=proposal.corr,
                cause=cid,
                at=at,
            )
        )
        ack = await self.bus.publish(started, expect_last_seq=last_seq, expect_subject=subject)
        log.info("dispatch.started", command_id=cid, event_id=started.id, command=definition.name, rerun=rerun)
        self._running.add(cid)
        try:
            # the message stays ours while it runs: not redelivered (and taken for an orphan) elsewhere
            keepalive = None if delivery is None else asyncio.create_task(self._keep_alive(delivery))
            try:
                # the proposal's body was validated when it was judged (check_proposal)
                outcome = await self.executors.run(cid, definition, dict(proposal.body["args"]))
            finally:
                if keepalive is not None:
                    keepalive.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await keepalive
            await self._publish_outcome(proposal, outcome, ack.seq)
        finally:
            self._running.discard(cid)

    async def _publish_outcome(self, proposal: Envelope, outcome: Outcome, started_seq: int) -> None:
        cid = proposal.id
        kind = "command.succeeded" if outcome.ok else "command.failed"
        event = self._sign(
            make_event(
                kind,
                self.key.principal,
                {
                    "command_id": cid,
                    "exit_code": outcome.exit_code,
                    "output": fit_output(_clean(outcome.output)),
                    "duration_ms": outcome.duration_ms,
                },
                corr=proposal.corr,
                cause=cid,
            )
        )
        expect = started_seq
        for _ in range(10):
            try:
                await self.bus.publish(event, expect_last_seq=expect, expect_subject=f"sym.cmd.{cid}.>")
                break
            except ConflictError:
                # something was appended since we started: a note about a late approval or a replay
                # (then the outcome still belongs here), or a terminal event (then it does not)
                life = await self._life(cid)
                if life.terminal is not None:
                    log.error(
                        "dispatch.outcome_after_terminal",
                        command_id=cid,
                        event_id=event.id,
                        terminal=life.terminal.type,
                    )
                    return
                expect = life.last_seq
        else:
            log.error("dispatch.outcome_conflict", command_id=cid, event_id=event.id)
            return
        self.counts[kind] += 1
        log.info("dispatch.outcome", command_id=cid, event_id=event.id, type=kind, exit_code=outcome.exit_code)

    async def _keep_alive(self, delivery: Delivery) -> None:
        while True:
            await asyncio.sleep(5)
            await delivery.in_progress()

    async def _note(
        self,
        command_id: str,
        reason: str,
        detail: str,
        *,
        terminal: bool,
        expect: int | None = None,
        cause: str | None = None,
    ) -> None:
        """Publish ``command.denied``. A terminal denial has ``cause`` = the command id and ends it."""
        event = self._sign(
            make_event(
                "command.denied",
                self.key.principal,
                {"command_id": command_id, "reason": reason, "detail": detail[:2000]},
                corr=self._corr.get(command_id),
                cause=command_id if terminal else cause,
            )
        )
        kwargs: dict[str, Any] = {}
        if expect is not None:
            kwargs = {"expect_last_seq": expect, "expect_subject": f"sym.cmd.{command_id}.>"}
        await self.bus.publish(event, **kwargs)
        self.counts[f"denied.{reason}"] += 1
        log.info(
            "dispatch.denied",
            command_id=command_id,
            event_id=event.id,
            reason=reason,
            terminal=terminal,
            detail=detail[:200],
        )

    def _remember_corr(self, command_id: str, corr: str | None) -> None:
        if len(self._corr) > 100_000:
            self._corr.pop(next(iter(self._corr)))
        self._corr[command_id] = corr

    def _sign(self, event: Envelope) -> Envelope:
        return sign_event(event, self.key)

    # -- approval expiry -------------------------------------------------------------------
    async def _follow_requests(self) -> None:
        """Learn every pending approval request (also those other dispatchers made): only the
        runtime's own, for the command their subject names (a forged one could name any id, or
        ``*``, or push a real request's expiry out of reach); the earliest expiry wins."""
        async for msg in self.bus.follow("sym.cmd.*.approval_requested"):
            try:
                event = from_wire(msg.data)
            except DecodeError:
                continue
            expires, cid = event.body.get("expires_at"), event.body.get("command_id")
            if not (isinstance(expires, int) and isinstance(cid, str) and is_event_id(cid)):
                continue
            if msg.subject != f"sym.cmd.{cid}.approval_requested":
                continue
            state = await self.registry.ensure_through(msg.seq + 1)
            if decision_problem(state, cid, event, msg.seq) is not None:
                continue
            known = self._pending.get(cid)
            self._pending[cid] = expires if known is None else min(known, expires)

    async def _expire_loop(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(self.expiry_interval_s)
            now = self.clock()
            for cid, expires in list(self._pending.items()):
                if expires <= now:
                    self._pending.pop(cid, None)
                    try:
                        await self._advance(cid, None)
                    except _NotYet as later:
                        self._pending[cid] = later.at
                    except BusError as exc:
                        self._pending[cid] = expires
                        log.warning("dispatch.expiry_retry", command_id=cid, error=str(exc))


def _overdue_at(life: CommandLife) -> int:
    """When (ms) a started command with no outcome is past its time limit and the grace after it."""
    started = next((event for seq, event in life.events if seq == life.started_seq), None)
    limit_s = life.definition.sandbox.timeout_s if life.definition is not None else 30.0
    at = started.at if started is not None else 0
    return at + int((limit_s + ORPHAN_GRACE_S) * 1000)


def _clean(value: Any) -> Any:
    """Outputs must be canonical-encodable: keep str/bytes/int/float/bool/None/list/map."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (str, bytes, int, float, bool)):
        return value
    return str(value)
