"""The ordered push reader behind Bus.read / Bus.follow, against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

import symbiote.bus.reader as reader
from symbiote.bus.reader import StoredMsg
from symbiote.bus.stream import Bus

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_url, name="reader-test")
    await bus.ensure_stream()
    try:
        yield bus
    finally:
        await bus.close()


async def _publish(bus: Bus, count: int, *, size: int = 16, subjects: tuple[str, ...] = ("sym.t.a",)) -> list[int]:
    acks = []
    for start in range(0, count, 500):
        batch = range(start, min(count, start + 500))
        acks += await asyncio.gather(
            *(bus.publish_raw(subjects[i % len(subjects)], i.to_bytes(4, "big") * (size // 4)) for i in batch)
        )
    return [a.seq for a in acks]


def _number(msg: StoredMsg) -> int:
    return int.from_bytes(msg.data[:4], "big")


async def _consumers(bus: Bus) -> int:
    info = await bus.js.stream_info(bus.stream)
    return int(info.state.consumer_count)


async def test_reads_every_message_in_order_filtered_and_ends(bus: Bus) -> None:
    seqs = await _publish(bus, 3000, subjects=("sym.t.a", "sym.t.b"))
    everything = [m async for m in bus.read("sym.t.>")]
    assert [m.seq for m in everything] == seqs
    assert [_number(m) for m in everything] == list(range(3000))
    assert all(m.time_ms > 0 for m in everything)
    only_b = [m async for m in bus.read("sym.t.b")]
    assert [m.subject for m in only_b] == ["sym.t.b"] * 1500
    assert [_number(m) for m in only_b] == list(range(1, 3000, 2))
    tail = [m async for m in bus.read("sym.t.>", from_seq=seqs[2500])]
    assert [m.seq for m in tail] == seqs[2500:]
    assert [m async for m in bus.read("sym.nothing.here")] == []
    await asyncio.sleep(0.1)
    assert await _consumers(bus) == 0  # every read removed its consumer


async def test_a_slow_reader_holds_the_server_back(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flow control: the server waits for the reader instead of filling its memory."""
    await _publish(bus, 8000, size=4096)  # 32 MB
    most = 0
    requests = 0
    push = reader._Delivery._push

    def counting(self: Any, item: Any) -> None:
        nonlocal most, requests
        push(self, item)
        most = max(most, len(self.items))
        requests += isinstance(item, reader._Answer)

    monkeypatch.setattr(reader._Delivery, "_push", counting)
    seen = []
    async for msg in bus.read("sym.t.>"):
        seen.append(_number(msg))
        if len(seen) % 200 == 0:
            await asyncio.sleep(0.05)
    assert seen == list(range(8000))
    # the server asked, and waited for answers that came only once the reader had caught up
    assert requests > 0
    assert most < 6000, most


async def test_a_reader_that_pauses_past_a_heartbeat_still_reads_to_the_end(bus: Bus) -> None:
    """While the server waits for a paused reader's flow-control answer, its heartbeats say the
    consumer is stalled: that is no sign of having caught up, and the read must not end there."""
    seqs = await _publish(bus, 600, size=100_000)
    seen = 0
    async for _ in bus.read("sym.t.>"):
        seen += 1
        if seen == 50:
            await asyncio.sleep(2.5)  # a slow step of the caller, e.g. a large batch being verified
    assert seen == len(seqs)


async def test_a_lost_delivery_restarts_after_the_last_message_taken(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    await _publish(bus, 1000)
    receive = reader._Delivery._receive
    starts = 0
    dropped = False
    start = reader._Delivery.start

    async def counting_start(self: Any, *args: Any) -> int:
        nonlocal starts
        starts += 1
        return await start(self, *args)

    async def lossy(self: Any, msg: Any) -> None:
        nonlocal dropped
        if msg.data and not dropped and self.delivered == 400:
            dropped = True  # as if a slow subscription had dropped it
            return
        await receive(self, msg)

    monkeypatch.setattr(reader._Delivery, "_receive", lossy)
    monkeypatch.setattr(reader._Delivery, "start", counting_start)
    numbers = [_number(m) async for m in bus.read("sym.t.>")]
    assert dropped and starts == 2
    assert numbers == list(range(1000))  # nothing lost, nothing twice


async def test_a_follower_survives_the_loss_of_its_consumer(bus: Bus) -> None:
    await _publish(bus, 10)
    got: list[int] = []

    async def follow() -> None:
        async for msg in bus.read("sym.t.>", follow=True):
            got.append(_number(msg))

    task = asyncio.create_task(follow())
    try:
        while len(got) < 10:
            await asyncio.sleep(0.05)
        names = [c.name async for c in _consumer_names(bus)]
        assert len(names) == 1
        await bus.js.delete_consumer(bus.stream, names[0])  # e.g. lost in a server restart
        await bus.publish_raw("sym.t.a", (10).to_bytes(4, "big") * 4)
        async with asyncio.timeout(20):
            while len(got) < 11:
                await asyncio.sleep(0.05)
        assert got == list(range(11))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_closing_early_removes_the_consumer(bus: Bus) -> None:
    await _publish(bus, 100)
    stream = bus.read("sym.t.>", follow=True)
    first = await anext(stream)
    assert first.seq == 1
    await stream.aclose()
    assert await _consumers(bus) == 0


async def _consumer_names(bus: Bus) -> AsyncIterator[Any]:
    for info in await bus.js.consumers_info(bus.stream):
        yield info


@pytest.mark.parametrize("how", ["read", "follow"])
async def test_a_follower_cancelled_while_it_starts_stops(bus: Bus, how: str) -> None:
    """Cancel followers at every moment of their start-up (the consumer request in flight, its
    reply just in): each one stops at once instead of following on."""
    await _publish(bus, 50)
    loop = asyncio.get_running_loop()

    async def follow() -> None:
        source = bus.read("sym.t.>", follow=True) if how == "read" else bus.follow("sym.t.>")
        async with contextlib.aclosing(source) as messages:
            async for _ in messages:
                pass

    # how long a start takes here, to spread the cancellations over it
    began = loop.time()
    task = asyncio.create_task(follow())
    while await _consumers(bus) == 0:
        await asyncio.sleep(0.001)
    startup = loop.time() - began
    task.cancel()
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)
    for attempt in range(60):
        task = asyncio.create_task(follow())
        await asyncio.sleep(startup * 2 * attempt / 60)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, f"a follower cancelled {startup * 2 * attempt / 60 * 1000:.1f} ms after its start did not stop"
        assert task.cancelled()


async def test_a_task_cancelled_as_a_reply_comes_in_stops(bus: Bus) -> None:
    """Requests and publishes re-raise a cancellation that arrived with their reply."""
    await _publish(bus, 5)

    async def requests() -> None:
        while True:
            await bus.next_after("sym.t.>", 1)
            await bus.publish_raw("sym.t.a", b"more")

    for attempt in range(120):
        task = asyncio.create_task(requests())
        await asyncio.sleep(attempt * 0.00005)  # spread over a few round trips
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, f"a task cancelled after {attempt * 0.05:.2f} ms went on"
        assert task.cancelled()
