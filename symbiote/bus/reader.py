"""Reading the stream in order through a push consumer (what :meth:`Bus.read` and :meth:`Bus.follow` use).

A pull consumer's ``fetch`` costs nats-py a task and a timer per message; a push consumer
delivering into a callback is about five times cheaper per message, which is most of what
a replay or an audit spends on reading. :func:`read_ordered` gives it the guarantees of an
ordered consumer:

- **In order, each message once.** Every delivery carries its consumer sequence; a gap (a
  message lost on the way, e.g. dropped by a slow subscription) or a status message from the
  server restarts the consumer after the last message handed to the caller, and everything
  queued behind the gap is discarded.
- **Stalls are noticed.** The server sends a heartbeat when it has nothing to deliver; no
  message and no heartbeat for three intervals (a server restart, a lost consumer) also
  restarts the consumer. A heartbeat that reports a delivery we never saw is a gap.
- **Bounded memory.** Flow control is on: after a window of bytes the server waits for the
  reader's answer, and the reader answers only once the caller has taken every message
  before the request, so a slow caller slows the server instead of filling memory.

Without ``follow`` the read ends after the last message that was pending (the server says
how many remain with each delivery), or when the consumer is idle; with it, it goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

from symbiote.errors import BusError

__all__ = ["StoredMsg", "raise_if_cancelling", "read_ordered"]

_CONTROL = "100"  # heartbeats and flow-control requests
_MAX_RESTARTS = 8  # restarts in a row without progress before a read without ``follow`` gives up
log = structlog.get_logger("symbiote.bus")


@dataclass(frozen=True, slots=True)
class StoredMsg:
    """One message as stored in the stream."""

    seq: int
    subject: str
    data: bytes
    time_ms: int = 0


@dataclass(frozen=True, slots=True)
class _Answer:
    """A flow-control request (or a stalled consumer's heartbeat): answer once the caller caught up."""

    reply: str


@dataclass(frozen=True, slots=True)
class _Break:
    """The deliveries after this point cannot be trusted: restart after the last message taken."""

    why: str


@dataclass(frozen=True, slots=True)
class _Idle:
    """A heartbeat with nothing missed: the consumer has nothing more to deliver right now."""


_IDLE = _Idle()
_Item = StoredMsg | _Answer | _Break | _Idle


class _Delivery:
    """One incarnation of the push consumer: its subscription, and what it delivered so far."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.items: deque[_Item] = deque()
        self.ready = asyncio.Event()
        self.delivered = 0  # last consumer sequence seen
        self.pending = -1  # messages left after the last one delivered, as the server said
        self.active = time.monotonic()
        self.broken = False
        self.sub: Subscription | None = None
        self.consumer: str | None = None

    async def start(self, js: JetStreamContext, stream: str, subject: str, start: int, heartbeat_s: float) -> int:
        """Subscribe, then create the consumer; returns how many messages it has pending."""
        inbox = self.nc.new_inbox()
        self.sub = await self.nc.subscribe(inbox, cb=self._receive)
        config = api.ConsumerConfig(
            deliver_subject=inbox,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(start, 1),
            ack_policy=api.AckPolicy.NONE,
            filter_subject=subject,
            flow_control=True,
            idle_heartbeat=heartbeat_s,
            inactive_threshold=30.0,
            mem_storage=True,
            num_replicas=1,
        )
        info = await js.add_consumer(stream, config)
        self.consumer = info.name
        return int(info.num_pending or 0)

    async def close(self, js: JetStreamContext, stream: str) -> None:
        """Unsubscribe and delete the consumer (best effort: an ephemeral one expires anyway)."""
        sub, self.sub = self.sub, None
        consumer, self.consumer = self.consumer, None
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError):
            if sub is not None:
                await sub.unsubscribe()
            if consumer is not None and self.nc.is_connected:  # not while reconnecting: it would wait out the timeout
                await js.delete_consumer(stream, consumer)

    def _push(self, item: _Item) -> None:
        self.items.append(item)
        self.ready.set()

    def _fail(self, why: str) -> None:
        self.broken = True
        self._push(_Break(why))

    async def _receive(self, msg: Msg) -> None:
        """The subscription's callback: queue data in order; turn control messages into markers."""
        self.active = time.monotonic()
        if self.broken:
            return
        headers = msg.headers
        if not msg.data and headers and "Status" in headers:
            self._control(msg, headers)
            return
        tokens = msg.reply.split(".") if msg.reply else []
        # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>, or with
        # <domain>.<account hash> after ACK (and a random token at the end)
        base = 5 if len(tokens) == 9 else 7
        try:
            seq, cseq, stamp, pending = (int(t) for t in tokens[base : base + 4])
        except ValueError:
            self._fail(f"not a JetStream delivery: reply {msg.reply!r}")
            return
        if cseq != self.delivered + 1:
            self._fail(f"consumer sequence {cseq} after {self.delivered}")
            return
        self.delivered = cseq
        self.pending = pending
        self._push(StoredMsg(seq, msg.subject, msg.data, stamp // 1_000_000))

    def _control(self, msg: Msg, headers: dict[str, str]) -> None:
        status = headers.get("Status")
        if status != _CONTROL:
            self._fail(f"status {status}: {headers.get('Description', '')}")
            return
        if msg.reply:  # a flow-control request
            self._push(_Answer(msg.reply))
            return
        last = headers.get("Nats-Last-Consumer")
        if last is not None and last.isdigit() and int(last) != self.delivered:
            self._fail(f"the server delivered up to {last}, we saw {self.delivered}")
            return
        stalled = headers.get("Nats-Consumer-Stalled")
        if stalled:
            # the server holds deliveries back until its flow-control request is answered: more
            # is coming, so this is no sign of having caught up
            self._push(_Answer(stalled))
            return
        self._push(_IDLE)


def raise_if_cancelling() -> None:
    """Raise the cancellation of the current task if an await swallowed it.

    nats-py waits for replies with :func:`asyncio.wait_for`, which on Python 3.11 returns the
    reply (or turns the cancellation into a timeout) when the task is cancelled just as the
    reply arrives: the task is then still marked as cancelling but goes on, and a follower
    would wait for new messages forever. Call this after every such request.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def read_ordered(
    nc: Client,
    js: JetStreamContext,
    stream: str,
    subject: str,
    *,
    from_seq: int = 1,
    follow: bool = False,
    heartbeat_s: float = 1.0,
) -> AsyncGenerator[StoredMsg, None]:
    """The messages of ``stream`` on ``subject`` from ``from_seq``, in order (see the module doc)."""
    position = max(from_seq, 1) - 1  # last sequence handed to the caller
    stall_s = 3 * heartbeat_s
    restarts = 0
    why = ""
    while True:
        raise_if_cancelling()  # nats-py may have turned the cancellation into an error
        if restarts:
            log.warning("read.restart", subject=subject, after=position, why=why, attempt=restarts)
            if restarts > _MAX_RESTARTS and not follow:
                raise BusError("reading the stream keeps failing", subject=subject, after=position, why=why)
            await asyncio.sleep(min(0.05 * 2**restarts, 2.0))
        delivery = _Delivery(nc)
        progress = position
        try:
            pending = await delivery.start(js, stream, subject, position + 1, heartbeat_s)
            raise_if_cancelling()  # a cancellation as the reply came in may have been swallowed
            if not follow and pending == 0:
                return
            while True:
                if not delivery.items:
                    delivery.ready.clear()
                    # a timer rather than asyncio.timeout: on 3.11 a timeout that fires as the task
                    # is cancelled can swallow the cancellation
                    timer = asyncio.get_running_loop().call_later(stall_s, delivery.ready.set)
                    try:
                        await delivery.ready.wait()
                    finally:
                        timer.cancel()
                    if not delivery.items:
                        if time.monotonic() - delivery.active >= stall_s:
                            why = f"no message nor heartbeat for {stall_s:g} s"
                            break  # restart the consumer
                        continue
                item = delivery.items.popleft()
                if isinstance(item, StoredMsg):
                    position = item.seq
                    yield item
                    if not follow and delivery.pending == 0 and not delivery.items:
                        return
                elif isinstance(item, _Answer):
                    await nc.publish(item.reply, b"")
                    raise_if_cancelling()
                elif isinstance(item, _Idle):
                    if not follow and not delivery.items:
                        return  # caught up, and the server has nothing more to deliver
                else:
                    why = item.why
                    break  # restart after ``position``
        finally:
            await delivery.close(js, stream)
        restarts = 1 if position > progress else restarts + 1
