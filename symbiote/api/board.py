"""The API's live view of the log: the registry, every command's folded state, pending approvals.

:class:`ApprovalBoard` reads the whole stream in order (``sym.>``), folds registry events
into a :class:`RegistryState` and each command's events with
:func:`symbiote.registry.policy.fold_command` — the same rules the dispatcher applies —
and tells its :class:`~symbiote.api.notify.SseChannel` (and any other notifiers) when the
set of pending approvals changes. It only reads; it never decides or executes anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from symbiote.api.models import CommandView, PendingApproval, pending_from_life, view_of
from symbiote.api.notify import Notifier, SseChannel, SseMessage
from symbiote.bus.envelope import Envelope, from_wire
from symbiote.bus.ids import now_ms
from symbiote.bus.stream import Bus, StoredMsg
from symbiote.errors import BusError, DecodeError
from symbiote.registry.policy import CommandLife, fold_command
from symbiote.registry.state import REGISTRY_TYPES, RegistryState
from symbiote.signers.keyring import Verdict

__all__ = ["ApprovalBoard"]

log = structlog.get_logger("symbiote.api.board")
_RECENT = 10
_INPUT_MEMORY = 2000


class ApprovalBoard:
    """Follows the log; ``async with`` (or :meth:`start` / :meth:`stop`) runs it.

    ``position`` is the last stream sequence applied. Events after the position the board
    started at are *live*: only live approval requests are announced to ``notifiers`` (a
    restart does not re-announce old ones); the page's channel always gets full snapshots.
    ``present``, when given, is applied to every pending approval before anyone sees it
    (tests use it to play a server that lies to the page).
    """

    def __init__(
        self,
        bus: Bus,
        *,
        notifiers: Sequence[Notifier] = (),
        clock: Callable[[], int] = now_ms,
        max_commands: int = 5000,
        expiry_check_s: float = 0.5,
        present: Callable[[PendingApproval], PendingApproval] | None = None,
    ) -> None:
        self.bus = bus
        self.channel = SseChannel()
        self.notifiers: list[Notifier] = [self.channel, *notifiers]
        self.clock = clock
        self.state = RegistryState()
        self.position = 0
        self.max_commands = max_commands
        self.expiry_check_s = expiry_check_s
        self.present = present
        self.registry_verdicts: dict[int, Verdict] = {}  # seq -> verdict of each registry event
        self._live_from = 0
        self._events: dict[str, list[tuple[int, Envelope]]] = {}
        self._lives: OrderedDict[str, CommandLife] = OrderedDict()  # least recently changed first
        self._pending: set[str] = set()
        self._expired: set[str] = set()
        self._inputs: OrderedDict[str, str] = OrderedDict()
        self._cache: dict[str, tuple[int, PendingApproval]] = {}
        self._advanced = asyncio.Event()
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._announcing: set[asyncio.Task[None]] = set()
        self._started = False
        self._stopped = False
        self.version = 0

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self, *, catch_up_timeout_s: float = 30.0) -> None:
        """Begin following and return once the board has caught up with the log; idempotent."""
        if self._started:
            return
        self._started = True
        await self.bus.ensure_stream()
        self._live_from = await self.bus.last_seq()
        self._tasks = [
            asyncio.create_task(self._follow(), name="approval-board-follow"),
            asyncio.create_task(self._publish_loop(), name="approval-board-publish"),
            asyncio.create_task(self._expiry_loop(), name="approval-board-expiry"),
        ]
        try:
            await self.wait_through(self._live_from, timeout=catch_up_timeout_s)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop following and end every page's stream; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.channel.close()
        tasks = [*self._tasks, *self._announcing]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> ApprovalBoard:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- waiting ---------------------------------------------------------------------------
    async def wait_through(self, seq: int, *, timeout: float = 5.0) -> None:
        """Return once every event up to ``seq`` is applied; :class:`BusError` after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.position < seq:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BusError("the API's view of the log is behind", position=self.position, wanted=seq)
            advanced = self._advanced
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(advanced.wait(), remaining)

    async def sync(self, *, timeout: float = 5.0) -> None:
        """Catch up with everything the stream holds now."""
        await self.wait_through(await self.bus.last_seq(), timeout=timeout)

    async def wait_for(self, predicate: Callable[[], bool], *, timeout: float = 5.0) -> None:
        """Return once ``predicate()`` holds (checked after each applied event); :class:`BusError` on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BusError("condition not reached in time", position=self.position)
            advanced = self._advanced
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(advanced.wait(), min(remaining, self.expiry_check_s))

    # -- reading ---------------------------------------------------------------------------
    def life(self, command_id: str) -> CommandLife | None:
        """A command's folded life, or None if the board has not seen it."""
        return self._lives.get(command_id)

    def pending(self) -> list[PendingApproval]:
        """Commands awaiting approval now (oldest request first), without expired ones."""
        now = self.clock()
        found = []
        for cid in self._pending:
            life = self._lives.get(cid)
            if life is None or (life.approval_expires_at is not None and life.approval_expires_at <= now):
                continue
            cached = self._cache.get(cid)
            if cached is None or cached[0] != life.last_seq:
                request = life.proposal.corr if life.proposal is not None else None
                view = pending_from_life(life, self._inputs.get(request) if request else None)
                if view is None:
                    continue
                if self.present is not None:
                    view = self.present(view)
                cached = (life.last_seq, view)
                self._cache[cid] = cached
            found.append(cached[1])
        return sorted(found, key=lambda p: (p.requested_at, p.command_id))

    def commands(self, *, limit: int = 50, state: str | None = None) -> list[CommandView]:
        """The most recently changed commands first, optionally only those in ``state``."""
        found: list[CommandView] = []
        for life in reversed(self._lives.values()):
            if len(found) >= limit:
                break
            view = view_of(life)
            if state is None or view.state == state:
                found.append(view)
        return found

    def snapshot(self) -> dict[str, Any]:
        """What the page's stream sends: pending approvals, recent commands, the log position."""
        return {
            "position": self.position,
            "pending": [p.model_dump(mode="json") for p in self.pending()],
            "recent": [c.model_dump(mode="json") for c in self.commands(limit=_RECENT)],
        }

    def snapshot_message(self) -> SseMessage:
        """:meth:`snapshot` as the ``approvals`` server-sent event."""
        return SseMessage("approvals", json.dumps(self.snapshot(), separators=(",", ":")))

    def input_text(self, event_id: str) -> str | None:
        """The text of a recent ``input.*`` event, if the board remembers it."""
        return self._inputs.get(event_id)

    # -- following -------------------------------------------------------------------------
    async def _follow(self) -> None:
        async for msg in self.bus.follow("sym.>", from_seq=self.position + 1):
            try:
                self._apply(msg)
            except Exception as exc:  # noqa: BLE001 - one event the board cannot show must not stop the page
                log.error("board.apply_failed", seq=msg.seq, error=repr(exc))

    def _apply(self, msg: StoredMsg) -> None:
        try:
            self._apply_event(msg)
        finally:
            self.position = max(self.position, msg.seq)
            advanced, self._advanced = self._advanced, asyncio.Event()
            advanced.set()

    def _apply_event(self, msg: StoredMsg) -> None:
        try:
            event = from_wire(msg.data)
        except DecodeError:
            return
        subject = msg.subject
        if subject.startswith("sym.reg."):
            if event.type in REGISTRY_TYPES:
                self.registry_verdicts[msg.seq] = self.state.apply(event, msg.seq)
                if event.type == "key.revoked":
                    self.channel.wake()  # the streams of the revoked key's sessions end now
            return
        if subject.startswith("sym.in."):
            text = event.body.get("text")
            # only a request whose signatures hold is shown beside an approval: a forged one would
            # put words in the person's mouth on the page where they decide
            if isinstance(text, str) and self.state.keyring.verify(event, msg.seq).ok:
                self._inputs[event.id] = text
                if len(self._inputs) > _INPUT_MEMORY:
                    self._inputs.popitem(last=False)
            return
        if not subject.startswith("sym.cmd."):
            return
        cid = subject.split(".")[2]
        events = self._events.setdefault(cid, [])
        events.append((msg.seq, event))
        life = fold_command(cid, events, self.state)
        life.last_seq = msg.seq
        self._lives[cid] = life
        self._lives.move_to_end(cid)
        was_pending = cid in self._pending
        is_pending = life.pending_approval and not life.rejected_by
        if is_pending:
            self._pending.add(cid)
        else:
            self._pending.discard(cid)
            self._cache.pop(cid, None)
        if is_pending and not was_pending and msg.seq > self._live_from:
            self._announce(life)
        self._prune()
        self.version += 1
        self._dirty.set()

    def _announce(self, life: CommandLife) -> None:
        request = life.proposal.corr if life.proposal is not None else None
        view = pending_from_life(life, self._inputs.get(request) if request else None)
        if view is None:
            return
        if self.present is not None:
            view = self.present(view)
        for notifier in self.notifiers:
            task = asyncio.create_task(self._announce_one(notifier, view))
            self._announcing.add(task)
            task.add_done_callback(self._announcing.discard)

    async def _announce_one(self, notifier: Notifier, view: PendingApproval) -> None:
        try:
            await notifier.announce(view)
        except Exception as exc:  # noqa: BLE001 - a failing channel (network, bad token) must not stop the board
            log.warning("board.announce_failed", notifier=type(notifier).__name__, error=repr(exc))

    def _prune(self) -> None:
        excess = len(self._lives) - self.max_commands
        if excess <= 0:
            return
        for cid in list(self._lives)[: excess * 2]:
            if excess <= 0:
                break
            life = self._lives[cid]
            if life.terminal is not None and cid not in self._pending:
                del self._lives[cid]
                self._events.pop(cid, None)
                self._expired.discard(cid)
                excess -= 1

    async def _publish_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if self.position >= self._live_from and self.channel.subscribers:
                self.channel.broadcast(self.snapshot_message())

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(self.expiry_check_s)
            now = self.clock()
            for cid in list(self._pending):
                life = self._lives.get(cid)
                expires = life.approval_expires_at if life is not None else None
                if expires is not None and expires <= now and cid not in self._expired:
                    self._expired.add(cid)
                    self._dirty.set()
