"""An ordered read of the stream for a latency-sensitive follower.

:meth:`symbiote.bus.stream.Bus.read` fetches with a fixed one-second window; in nats-py a
fetch that finds nothing pending waits until its whole batch has arrived or the window ends,
so a follower reading with a large batch sees new events up to a second late at moderate
rates. This reader is the same ephemeral, ordered, ack-less consumer with a short, chosen
window (20 ms by default): large batches while catching up, prompt delivery once caught up.
It uses only the bus's own JetStream context. (If ``Bus.read`` gains a window parameter,
this module can go.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

import nats.errors
from nats.js import api

from symbiote.bus.stream import Bus, StoredMsg

__all__ = ["read_stream"]


async def read_stream(
    bus: Bus,
    subject: str = "sym.>",
    *,
    from_seq: int = 1,
    follow: bool = False,
    batch: int = 1024,
    window_s: float = 0.02,
) -> AsyncGenerator[StoredMsg, None]:
    """Messages on ``subject`` from ``from_seq`` in order; ``follow`` keeps waiting for new ones.

    Without ``follow`` it ends once nothing is pending.
    """
    config = api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=max(from_seq, 1),
        ack_policy=api.AckPolicy.NONE,
        filter_subject=subject,
        inactive_threshold=30.0,
        mem_storage=True,
    )
    sub = await bus.js.pull_subscribe(subject, durable=None, stream=bus.stream, config=config)
    idle_window = window_s if follow else max(window_s, 0.5)
    try:
        while True:
            try:
                msgs = await sub.fetch(batch, timeout=idle_window)
            except (TimeoutError, nats.errors.TimeoutError):
                if follow:
                    continue
                return
            for msg in msgs:
                meta = msg.metadata
                yield StoredMsg(meta.sequence.stream, msg.subject, msg.data, int(meta.timestamp.timestamp() * 1000))
            if not follow and msgs and msgs[-1].metadata.num_pending == 0:
                return
    finally:
        with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
            await sub.unsubscribe()
