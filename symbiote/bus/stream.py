"""The ``SYMBIOTE`` JetStream stream: connecting, publishing, reading and supervised consuming.

Nothing else in symbiote talks to NATS. Publishes carry ``Nats-Msg-Id`` = event id and are
retried with the same id, so a retry never duplicates an event. Optimistic concurrency on a
command's subjects (``sym.cmd.<id>.>``) uses ``Nats-Expected-Last-Subject-Sequence`` with
``Nats-Expected-Last-Subject-Sequence-Subject``, so two writers can never both append after
the same position. Long-running pull consumers are supervised: every fetch is bounded, and a
consumer that errors or stalls is re-bound (nats.py #504, #510).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from symbiote.bus.envelope import MAX_EVENT_BYTES, Envelope, from_wire
from symbiote.bus.events import subject_for
from symbiote.bus.reader import StoredMsg, raise_if_cancelling, read_ordered
from symbiote.errors import BusError, ConflictError, DecodeError, IdTakenError
from symbiote.lifecycle import Stopped, cancel_and_wait, unless_stopped
from symbiote.signers.keys import verify_sig

__all__ = [
    "DEFAULT_STREAM",
    "NOT_UTF8",
    "Bus",
    "Delivery",
    "PullConsumer",
    "StoredMsg",
    "redact_url",
    "stream_config_problems",
    "subject_text",
]

DEFAULT_STREAM = "SYMBIOTE"
_WRONG_LAST_SEQUENCE = 10071
_LAST_MS = 7_258_118_400_000  # 2200-01-01: the server counts time in int64 nanoseconds (to 2262)
T = TypeVar("T")
# what a subscription may raise when the server restarts or the connection is re-established
_FOLLOW_ERRORS = (nats.errors.Error, nats.js.errors.Error, TimeoutError, BusError, OSError)
_RETRYABLE = (
    asyncio.TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)
log = structlog.get_logger("symbiote.bus")
_DIRECT_GETS = 64  # messages :meth:`Bus.history` fetches one by one before it reads the rest in bulk


NOT_UTF8 = " (not UTF-8)"


def subject_text(raw: bytes) -> str:
    """A stored subject as text. UTF-8 reads as it is. Other bytes read as ``\\xNN`` escapes,
    with every backslash doubled and :data:`NOT_UTF8` after them: a subject never holds a space,
    so no two subjects read the same, and the hash of what is read names the bytes stored."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    out = []
    for char in raw.decode("utf-8", "surrogateescape"):
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        else:
            out.append("\\\\" if char == "\\" else char)
    return "".join(out) + NOT_UTF8


class _Client(Client):
    """nats-py's client, taking subjects that are not UTF-8.

    The server stores any bytes as a subject, and nats-py decodes every delivered subject
    strictly: one such message, published by anyone who can connect, raised in the client's
    read loop at each delivery, so no reader of the log got past it. Here such a subject reads
    as :func:`subject_text` makes it (and is hashed and shown so), in a delivery and in the
    ``Nats-Subject`` header of a direct get alike; every other subject reads as before.
    """

    def _build_message(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: dict[str, str] | None
    ) -> Msg:
        return self.msg_class(
            subject=subject_text(subject),
            reply=reply.decode("utf-8", "backslashreplace"),
            data=data,
            headers=headers,
            _client=self,
            _sid=sid,
        )

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        headers: dict[str, str] = Client._parse_header_lines(raw)
        if b"ats-Subject" not in raw and b"ats-subject" not in raw:
            return headers  # every delivery but a direct get's: nothing more to do
        for line in raw.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if sep and name.strip().lower() == b"nats-subject":
                headers["Nats-Subject"] = subject_text(value.strip())
        return headers


class Delivery:
    """A message delivered by a pull consumer, with its stream position and ack controls."""

    __slots__ = ("_msg", "data", "num_delivered", "num_pending", "seq", "subject")

    def __init__(self, msg: Msg) -> None:
        meta = msg.metadata
        self._msg = msg
        self.seq: int = meta.sequence.stream
        self.subject: str = msg.subject
        self.data: bytes = msg.data
        self.num_delivered: int = meta.num_delivered
        self.num_pending: int = meta.num_pending

    async def ack(self) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self._msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self._msg.nak(delay=delay)

    async def in_progress(self) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self._msg.in_progress()

    async def term(self) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self._msg.term()


class Bus:
    """A connection to NATS and the ``SYMBIOTE`` stream."""

    def __init__(self, nc: Client, *, stream: str = DEFAULT_STREAM) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=10)
        self.stream = stream

    @classmethod
    async def connect(
        cls, url: str, *, name: str = "symbiote", stream: str = DEFAULT_STREAM, token: str | None = None
    ) -> Bus:
        """Connect (reconnecting forever on loss) and return a bus; the stream is not created here.

        ``url`` may list several servers of a cluster separated by commas; ``token`` is the
        server's authorization token, if it wants one.
        """
        nc = _Client()
        refused: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()

        async def on_error(exc: Exception) -> None:
            # nats-py retries a refused first connection forever: give up at once instead, and say
            # so once, in the BusError below, rather than in a log line per attempt
            if not nc.is_connected and (refused.done() or "authorization" in str(exc).lower()):
                if not refused.done():
                    refused.set_result(exc)
                return
            await _log_error(exc)

        connecting = asyncio.create_task(
            nc.connect(
                [part.strip() for part in url.split(",") if part.strip()],  # a cluster: a,b,c
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,  # type: ignore[arg-type]  # seconds; nats-py annotates int
                connect_timeout=5,
                allow_reconnect=True,
                error_cb=on_error,
                disconnected_cb=_log_disconnected,
                token=token,
            )
        )
        shown = redact_url(url)
        waited = False
        try:
            waiters: list[asyncio.Future[Any]] = [connecting, refused]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            waited = True
        finally:  # refused, or cancelled (even just as it connected): no client is left behind
            if not (waited and connecting.done()):
                await cancel_and_wait([connecting])
                with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                    await nc.close()
        if connecting.cancelled():  # refused
            reason = str(refused.result())
            raise BusError("NATS refused the connection (a missing or wrong token?)", url=shown, error=reason)
        error = connecting.exception()
        if isinstance(error, (OSError, nats.errors.Error)):
            raise BusError("cannot connect to NATS", url=shown, error=str(error)) from error
        if error is not None:
            raise error
        return cls(nc, stream=stream)

    async def close(self) -> None:
        """Drain and close the connection; idempotent. A connection that is down (the server
        went away) is closed without draining, and what its socket says on the way is dropped."""
        if self.nc.is_closed:
            return
        if self.nc.is_connected:
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError, OSError):
                await asyncio.wait_for(self.nc.drain(), 5)
        if not self.nc.is_closed:
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError, OSError):
                await self.nc.close()

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def ensure_stream(self, *, replicas: int = 1, duplicate_window_s: float = 300.0) -> None:
        """Create the stream per DESIGN §3 (subjects ``sym.>``, file storage, limits, dedupe ≥ 2 min)."""
        config = api.StreamConfig(
            name=self.stream,
            subjects=["sym.>"],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.NEW,
            duplicate_window=duplicate_window_s,
            num_replicas=replicas,
            allow_direct=True,
            max_msg_size=1024 * 1024,
        )
        try:
            await self.js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            # an existing stream with the same name: check it is ours rather than overwrite
            info = await self.js.stream_info(self.stream)
            if info.config.subjects != ["sym.>"]:
                raise BusError("a different stream already uses the name", stream=self.stream) from exc
            problems = stream_config_problems(info.config)
            if problems:
                raise BusError(
                    "the log's stream is set up to store events where their readers do not look: "
                    + "; ".join(problems),
                    stream=self.stream,
                ) from exc
        except (TimeoutError, nats.errors.Error) as exc:
            raise BusError("cannot create the stream", stream=self.stream, error=str(exc)) from exc

    async def publish(
        self,
        event: Envelope,
        *,
        expect_last_seq: int | None = None,
        expect_subject: str | None = None,
        attempts: int = 20,
    ) -> api.PubAck:
        """Publish a signed event on its subject; returns the ack (``seq``, ``duplicate``).

        With ``expect_last_seq``, the publish succeeds only if the last message on
        ``expect_subject`` (a wildcard such as ``sym.cmd.<id>.>``) is at that sequence;
        otherwise :class:`ConflictError` is raised. An event larger than ``MAX_EVENT_BYTES``
        (which no reader accepts) raises :class:`DecodeError` and is not published.
        """
        data = event.to_wire()
        if len(data) > MAX_EVENT_BYTES:  # every reader would refuse it
            raise DecodeError(
                "event too large for the log", event_id=event.id, size=len(data), max_size=MAX_EVENT_BYTES
            )
        ack = await self.publish_raw(
            subject_for(event),
            data,
            msg_id=event.id,
            expect_last_seq=expect_last_seq,
            expect_subject=expect_subject,
            attempts=attempts,
        )
        if ack.duplicate:
            await self._check_duplicate(event, data, ack.seq)
        return ack

    async def _check_duplicate(self, event: Envelope, data: bytes, seq: int) -> None:
        """JetStream dropped ``event`` as a duplicate of the message at ``seq``: fine if that is
        this event, or the same event made again (after a crash: the same id, type and actor on
        the same subject, a later time, every signature holding and one by a key that signs this
        one). Anything else took the id first (anyone may publish a message under a chosen
        ``Nats-Msg-Id``, and ids derived from a request can be computed): that raises
        :class:`IdTakenError` rather than let the event vanish in silence. A retry after the
        server's duplicate window (5 minutes, as ``ensure_stream`` sets it) is stored."""
        stored = await self.get(seq)
        subject = subject_for(event)
        if stored is not None and stored.data == data and stored.subject == subject:
            return
        try:
            earlier = from_wire(stored.data) if stored is not None and stored.subject == subject else None
        except DecodeError:
            earlier = None
        if (
            earlier is not None
            and (earlier.id, earlier.type, earlier.actor) == (event.id, event.type, event.actor)
            and earlier.sigs
            and {s.kid for s in earlier.sigs} & {s.kid for s in event.sigs}
            and all(verify_sig(s.kid, s.sig, earlier.signing_input()) for s in earlier.sigs)
        ):
            return
        log.warning("publish.id_taken", event_id=event.id, type=event.type, seq=seq)
        raise IdTakenError(
            "another message holds this event's id in the log: the event was not stored",
            event_id=event.id,
            seq=seq,
        )

    async def publish_raw(
        self,
        subject: str,
        data: bytes,
        *,
        msg_id: str | None = None,
        expect_last_seq: int | None = None,
        expect_subject: str | None = None,
        attempts: int = 20,
    ) -> api.PubAck:
        """Publish bytes as they are (tests use this for malformed input); retried with the same id."""
        headers: dict[str, str] = {}
        if msg_id is not None:
            headers["Nats-Msg-Id"] = msg_id
        if expect_last_seq is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expect_last_seq)
            if expect_subject is not None:
                headers["Nats-Expected-Last-Subject-Sequence-Subject"] = expect_subject
        delay = 0.05
        unanswered = False  # an earlier attempt got no answer: it may have been stored all the same
        for attempt in range(1, attempts + 1):
            try:
                ack = await self.js.publish(subject, data, headers=headers or None, timeout=5)
                raise_if_cancelling()  # the ack may have come in as the task was cancelled
                return ack
            except nats.js.errors.APIError as exc:
                if exc.err_code == _WRONG_LAST_SEQUENCE:
                    # the server checks the expected sequence before duplicates: an attempt stored
                    # whose answer was lost makes its retry look like a lost race; it is our own
                    if unanswered and msg_id is not None:
                        stored = await self._direct_get({"last_by_subj": subject})
                        if stored is not None and stored.data == data:
                            return api.PubAck(stream=self.stream, seq=stored.seq, duplicate=True)
                    raise ConflictError(
                        "another writer appended first", subject=subject, expected=expect_last_seq
                    ) from exc
                if exc.code == 503 and attempt < attempts:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                raise BusError("publish refused", subject=subject, error=str(exc), code=exc.err_code) from exc
            except _RETRYABLE as exc:
                raise_if_cancelling()
                unanswered = True
                if attempt == attempts:
                    raise BusError("publish failed after retries", subject=subject, error=repr(exc)) from exc
                log.warning("publish.retry", subject=subject, attempt=attempt, error=repr(exc), event_id=msg_id)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise BusError("publish failed", subject=subject)  # pragma: no cover - loop always returns or raises

    @property
    def connected(self) -> bool:
        """Whether the connection to NATS is up now (not closed, not reconnecting)."""
        return bool(self.nc.is_connected)

    async def last_seq(self) -> int:
        """The stream's last sequence number (0 when empty)."""
        return int((await self.stream_state()).last_seq or 0)

    async def stream_info(self, *, deleted: bool = False) -> api.StreamInfo:
        """The stream's configuration and state as the server holds them now, in one request; with
        ``deleted``, the state lists the sequences deleted from its middle (a purged beginning is
        not listed: the first sequence says that)."""

        async def call() -> Msg:
            request = json.dumps({"deleted_details": True}).encode() if deleted else b""
            return await self.nc.request(f"$JS.API.STREAM.INFO.{self.stream}", request, timeout=5)

        reply = json.loads((await self._retry(call)).data)
        error = reply.get("error")
        if error is not None:
            if error.get("code") == 404:
                raise BusError(
                    "there is no log here yet (its stream does not exist): run `symbiote init` or `symbiote up` first",
                    stream=self.stream,
                )
            raise BusError("stream info failed", stream=self.stream, detail=error)
        info: api.StreamInfo = api.StreamInfo.from_response(reply)
        return info

    async def stream_state(self) -> api.StreamState:
        """The stream's state (first/last sequence, message count)."""
        return (await self.stream_info()).state

    async def get(self, seq: int) -> StoredMsg | None:
        """The message at ``seq``, or None if there is none (deleted or beyond the end)."""
        req = {"seq": seq}
        return await self._direct_get(req)

    async def first_seq_since(self, ms: int) -> int | None:
        """The sequence of the first message the server stored at or after ``ms`` (Unix
        milliseconds, the server's clock), or None when none was."""
        ms = min(max(ms, 0), _LAST_MS)  # a time from a hostile event may lie beyond any calendar
        when = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        found = await self._direct_get({"start_time": when})
        return found.seq if found is not None else None

    async def next_after(self, subject: str, seq: int) -> StoredMsg | None:
        """The first message at or after ``seq`` on ``subject`` (wildcards allowed), or None."""
        return await self._direct_get({"seq": max(seq, 1), "next_by_subj": subject})

    async def history(self, subject: str, from_seq: int = 1, limit: int | None = 1000) -> list[StoredMsg]:
        """Every message on ``subject`` from ``from_seq`` on, in order (at most ``limit``; all with None).

        A few messages are fetched one by one; past that, the rest is read through a consumer
        (one request per message would make a subject flooded with messages slow to read).
        """
        found: list[StoredMsg] = []
        seq = from_seq
        while limit is None or len(found) < limit:
            if len(found) == _DIRECT_GETS:
                async with contextlib.aclosing(self.read(subject, from_seq=seq)) as rest:
                    async for stored in rest:
                        found.append(stored)
                        if limit is not None and len(found) >= limit:
                            break
                break
            msg = await self.next_after(subject, seq)
            if msg is None:
                break
            found.append(msg)
            seq = msg.seq + 1
        return found

    async def _direct_get(self, req: dict[str, Any]) -> StoredMsg | None:
        async def call() -> Msg:
            return await self.nc.request(f"$JS.API.DIRECT.GET.{self.stream}", json.dumps(req).encode(), timeout=5)

        msg = await self._retry(call)
        headers = msg.headers or {}
        status = headers.get("Status")
        if status == "404":
            return None
        if status:
            raise BusError("direct get failed", status=status, detail=headers.get("Description"))
        return StoredMsg(
            seq=int(headers["Nats-Sequence"]),
            subject=headers["Nats-Subject"],
            data=msg.data,
        )

    def read(
        self, subject: str = "sym.>", *, from_seq: int = 1, follow: bool = False
    ) -> AsyncGenerator[StoredMsg, None]:
        """The stream's messages on ``subject`` from ``from_seq``, in order; ``follow`` waits for new ones.

        An ordered push consumer (:func:`~symbiote.bus.reader.read_ordered`): a gap or a stall
        restarts it after the last message yielded. Without ``follow`` the read ends at the end
        of the stream.
        """
        return read_ordered(self.nc, self.js, self.stream, subject, from_seq=from_seq, follow=follow)

    async def follow(self, subject: str = "sym.>", *, from_seq: int = 1) -> AsyncGenerator[StoredMsg, None]:
        """:meth:`read` with ``follow``, supervised: after a NATS error (a server restart, a stalled
        subscription) it subscribes again from the message after the last one it yielded."""
        position = from_seq - 1
        backoff = 0.1
        while True:
            try:
                stream = self.read(subject, from_seq=position + 1, follow=True)
                async with contextlib.aclosing(stream) as messages:
                    async for msg in messages:
                        position, backoff = msg.seq, 0.1
                        yield msg
            except _FOLLOW_ERRORS as exc:
                raise_if_cancelling()  # nats-py may turn a cancelled request into a timeout
                log.warning("follow.resubscribe", subject=subject, position=position, error=repr(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _retry(self, call: Callable[[], Awaitable[T]], attempts: int = 20) -> T:
        delay = 0.05
        for attempt in range(1, attempts + 1):
            try:
                result = await call()
                raise_if_cancelling()  # the reply may have come in as the task was cancelled
                return result
            except _RETRYABLE as exc:
                raise_if_cancelling()
                if attempt == attempts:
                    raise BusError("NATS request failed after retries", error=repr(exc)) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise BusError("unreachable")  # pragma: no cover


Handler = Callable[[Sequence[Delivery]], Awaitable[None]]


def stream_config_problems(config: api.StreamConfig) -> list[str]:
    """What in a stream's configuration moves or brings in events behind their signers' backs: a
    subject transform (an owner's revocation stored off ``sym.reg.…`` is never applied), other
    streams as sources, a mirror. Limits and deletions are not listed: they leave gaps that the
    audit names by sequence."""
    problems = []
    if config.subjects != ["sym.>"]:
        problems.append(f"its subjects are {config.subjects}, not ['sym.>']")
    transform = config.subject_transform
    if transform is not None and (transform.src or transform.dest):
        problems.append(f"a subject transform rewrites {transform.src!r} to {transform.dest!r}")
    if config.sources:
        problems.append(f"{len(config.sources)} other stream(s) feed it ({', '.join(s.name for s in config.sources)})")
    if config.mirror is not None:
        problems.append(f"it mirrors the stream {config.mirror.name!r}")
    return problems


class PullConsumer:
    """A supervised durable pull consumer: ``run()`` fetches batches and hands them to ``handler``.

    N processes running the same durable share its messages. A fetch that errors (server
    restart, stalled subscription) re-binds the subscription; ``shutdown()`` stops it and
    ``run()`` re-raises the handler's first failure.
    """

    def __init__(
        self,
        bus: Bus,
        durable: str,
        subjects: Sequence[str],
        handler: Handler,
        *,
        batch: int = 256,
        ack_wait_s: float = 30.0,
        max_ack_pending: int = 20_000,
        fetch_timeout_s: float = 1.0,
    ) -> None:
        self.bus = bus
        self.durable = durable
        self.subjects = list(subjects)
        self.handler = handler
        self.batch = batch
        self.ack_wait_s = ack_wait_s
        self.max_ack_pending = max_ack_pending
        self.fetch_timeout_s = fetch_timeout_s
        self._stop = asyncio.Event()
        self.rebinds = 0

    async def ensure(self) -> None:
        """Create the durable consumer if it does not exist."""
        config = api.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=self.ack_wait_s,
            max_ack_pending=self.max_ack_pending,
            max_waiting=512,
            filter_subjects=self.subjects if len(self.subjects) > 1 else None,
            filter_subject=self.subjects[0] if len(self.subjects) == 1 else None,
        )
        await self.bus._retry(lambda: self.bus.js.add_consumer(self.bus.stream, config))

    async def run(self) -> None:
        """Fetch and handle until :meth:`shutdown`; survives server restarts."""
        backoff = 0.1
        while not self._stop.is_set():
            sub: JetStreamContext.PullSubscription | None = None
            try:
                # binding waits on NATS (minutes of retries while it is away): a stop does not wait for it
                try:
                    await unless_stopped(self._stop, self.ensure())
                    binding = self.bus.js.pull_subscribe_bind(self.durable, stream=self.bus.stream)
                    sub = await unless_stopped(self._stop, binding)
                except Stopped:
                    break
                backoff = 0.1
                while not self._stop.is_set():
                    try:
                        msgs = await sub.fetch(self.batch, timeout=self.fetch_timeout_s)
                    except (TimeoutError, nats.errors.TimeoutError):
                        raise_if_cancelling()
                        continue  # no messages within the fetch window
                    raise_if_cancelling()
                    await self.handler([Delivery(m) for m in msgs])
            except _FOLLOW_ERRORS as exc:
                raise_if_cancelling()
                if self._stop.is_set():
                    break
                self.rebinds += 1
                log.warning("consumer.rebind", durable=self.durable, error=repr(exc), backoff_s=backoff)
                await _sleep_or_stop(self._stop, backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                if sub is not None:
                    with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError, BusError):
                        await sub.unsubscribe()

    def shutdown(self) -> None:
        """Ask ``run()`` to return after the batch in hand; idempotent."""
        self._stop.set()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def redact_url(url: str) -> str:
    """``url`` (one server or a comma-separated list) without credentials, for logs and messages."""
    return ",".join(re.sub(r"^(\s*[a-z]+://)[^@/]*@", r"\1***@", part) for part in url.split(","))


async def _log_error(exc: Exception) -> None:
    log.warning("nats.error", error=repr(exc))


async def _log_disconnected() -> None:
    log.debug("nats.disconnected")
