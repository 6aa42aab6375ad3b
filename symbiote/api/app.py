"""The HTTPS API and the phone page: read the log, post signed events, pair a phone.

Every write is a signed event that the server verifies against the registry before it is
appended; no endpoint runs anything — the dispatcher decides from the log, as always.

Routes (all under ``/api``; the page is served from ``/``):

``GET  /api/health``            liveness, log position, certificate fingerprint
``GET  /api/events``            the log, paged from a sequence, with verified signers
``GET  /api/commands``          commands' folded states, most recent first
``GET  /api/commands/{id}``     one command with its events
``GET  /api/approvals``         commands waiting for approval, described in plain words
``GET  /api/approvals/stream``  the same, live, as server-sent events
``POST /api/approvals``         a signed ``command.approved`` / ``command.rejected``
``POST /api/requests``          a signed ``input.text`` or ``input.voice``
``POST /api/transcribe``        a recording's transcript (to show, then sign as ``input.voice``)
``POST /api/pair``              register a phone's key with a one-time code
``GET  /api/keys``              what a kid is registered as (the page checks its own key)
``GET  /api/session/challenge`` a one-time nonce to sign
``POST /api/session``           open a read session with a paired key's signature of a nonce
``GET  /api/session``           the session's principal and end
``DELETE /api/session``         end the session

The reads of the log (events, commands, approvals and their stream) need a read session
(:mod:`symbiote.api.sessions`); health, pairing and the key lookup do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import mimetypes
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import structlog
import uvicorn
from fastapi import Depends, FastAPI, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from symbiote.agents.voice import Transcriber
from symbiote.api.board import ApprovalBoard
from symbiote.api.models import CommandView, PendingApproval, view_of
from symbiote.api.notify import WAKE, Notifier
from symbiote.api.pairing import PairingError, PairingStore, normalize_code, proof_message
from symbiote.api.sessions import SESSION_COOKIE, Session, SessionError, SessionStore
from symbiote.api.tls import TlsMaterial, ensure_certificate, format_fingerprint, lan_addresses
from symbiote.api.wire import b64decode, envelope_from_json, event_json
from symbiote.bootstrap import register_key
from symbiote.bus.envelope import Envelope, from_wire
from symbiote.bus.events import CommandApproved, CommandRejected, parse_body
from symbiote.bus.ids import now_ms
from symbiote.bus.stream import Bus
from symbiote.errors import (
    AudioError,
    BusError,
    DecodeError,
    IdTakenError,
    ServerStartError,
    SignatureError,
    SymbioteError,
)
from symbiote.home import DataDir
from symbiote.registry.policy import Denial, check_approval
from symbiote.registry.state import is_registry_change
from symbiote.signers.keys import public_key_from_kid, verify_sig
from symbiote.validation import error_words

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_CLOCK_SKEW_MS",
    "STATIC_DIR",
    "AcceptedEvent",
    "ApiRefusal",
    "ApiServer",
    "CommandDetail",
    "EventPage",
    "EventRow",
    "Health",
    "Heard",
    "KeyInfo",
    "PairRequest",
    "PairResult",
    "SessionChallenge",
    "SessionInfo",
    "SessionRequest",
    "Submission",
    "create_app",
]

log = structlog.get_logger("symbiote.api")
STATIC_DIR = Path(__file__).parent / "static"
MAX_CLOCK_SKEW_MS = 10 * 60 * 1000
MAX_BODY_BYTES = 1024 * 1024
_INPUT_ROLES = frozenset({"user", "owner"})
_SIGNATURE_REASONS = frozenset({"bad_signature", "unknown_key", "revoked_key"})
_DENIAL_STATUS = {"approval_digest_mismatch": 422, "not_permitted": 403, "wrong_role": 403, "malformed": 400}
mimetypes.add_type("application/manifest+json", ".webmanifest")
mimetypes.add_type("text/javascript", ".js")


class ApiRefusal(SymbioteError):
    """A request the API refuses: an HTTP ``status``, a reason code and a sentence for people."""

    def __init__(self, status: int, reason: str, detail: str, **fields: Any) -> None:
        super().__init__(detail, **fields)
        self.status = status
        self.reason = reason


# -- request and response bodies --------------------------------------------------------------
class Submission(BaseModel):
    """A signed event: its canonical wire bytes (base64), or the envelope as JSON with bin as base64."""

    wire: str | None = Field(None, description="canonical msgpack wire bytes, base64")
    event: dict[str, Any] | None = Field(
        None, description='the envelope as JSON; signatures and bin values as base64 (bin in the body as {"$bin": …})'
    )


class AcceptedEvent(BaseModel):
    """An event the API verified and appended to the log."""

    id: str
    type: str
    seq: int
    command_id: str | None = None


class PairRequest(BaseModel):
    """A phone's new public key, the one-time code, and its signature over :func:`proof_message`."""

    code: str = Field(description="the one-time code `symbiote keys pair` printed")
    kid: str = Field(description="ed25519:<unpadded base64url of the raw 32-byte public key>")
    proof: str = Field(description="base64 Ed25519 signature of b'symbiote/pair/v1\\0' + code + b'\\0' + kid")


class PairResult(BaseModel):
    """The registered key."""

    principal: str
    kid: str
    seq: int


class KeyInfo(BaseModel):
    """What a kid is registered as."""

    kid: str
    principal: str
    role: str
    active: bool
    registered_seq: int
    revoked_seq: int | None = None


class Heard(BaseModel):
    """What a recording says: the body of the ``input.voice`` to sign, and how long it took."""

    text: str
    audio_ms: int
    model: str
    language: str
    seconds: float


class SessionChallenge(BaseModel):
    """A single-use nonce to sign for :class:`SessionRequest`."""

    nonce: str
    expires_in_s: float


class SessionRequest(BaseModel):
    """A paired key's signature of a challenge."""

    kid: str = Field(description="the signing key: ed25519:<unpadded base64url of the public key>")
    nonce: str = Field(description="the nonce from GET /api/session/challenge")
    sig: str = Field(description="base64 Ed25519 signature of b'symbiote/session/v1\\0' + nonce + b'\\0' + kid")


class SessionInfo(BaseModel):
    """An open read session."""

    principal: str
    kid: str
    expires_at: int = Field(description="Unix time in milliseconds")


class EventRow(BaseModel):
    """One stored event with the principals whose signatures verify at its position."""

    seq: int
    subject: str
    event: dict[str, Any] | None = Field(None, description="the envelope as JSON (bin as base64)")
    verified: list[str] = Field(default_factory=list)
    problem: str | None = None


class EventPage(BaseModel):
    """A page of the log; ask again with ``from_seq=next_seq`` for more."""

    events: list[EventRow]
    next_seq: int


class CommandDetail(BaseModel):
    """One command: its folded state and its events."""

    command: CommandView
    events: list[EventRow]


class Health(BaseModel):
    """The API is up; where it is in the log; which certificate it serves."""

    ok: bool
    position: int
    fingerprint: str | None = Field(None, description="SHA-256 of the TLS certificate, AB:CD:… form")


def _refusal(exc: ApiRefusal) -> JSONResponse:
    return JSONResponse({"error": exc.reason, "detail": exc.message}, status_code=exc.status)


class _SecurityHeaders:
    """Refuses oversized bodies; adds a strict content security policy (not on the OpenAPI docs
    page) and no-cache to responses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"referrer-policy", b"no-referrer"))
                headers.append((b"content-security-policy", _CSP))
                if not path.startswith("/api/"):
                    headers.append((b"cache-control", b"no-cache"))
                message["headers"] = headers
            await send(message)

        too_big = ApiRefusal(413, "too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
        length = dict(scope.get("headers", [])).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            await _refusal(too_big)(scope, receive, wrapped)
            return
        if scope.get("method") not in ("GET", "HEAD", "OPTIONS"):
            # read the body here, counting as it comes: a chunked body has no length to check first
            body = await _read_body(receive, MAX_BODY_BYTES)
            if body is _GONE:
                return  # the client left: nobody to answer
            if body is None:
                await _refusal(too_big)(scope, receive, wrapped)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, wrapped)


_GONE = b"(the client disconnected)"


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body; None as soon as it grows past ``limit`` bytes; ``_GONE`` (by
    identity) when the client disconnected first."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return _GONE
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            return None
        parts.append(part)
        if not message.get("more_body", False):
            return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then what the client sends next (its disconnect)."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    b"manifest-src 'self'; worker-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


# -- the app ----------------------------------------------------------------------------------
async def _board(request: Request) -> ApprovalBoard:
    """The app's board, started on first use (a no-op once it runs)."""
    board: ApprovalBoard = request.app.state.board
    await board.start()
    return board


_BoardDep = Annotated[ApprovalBoard, Depends(_board)]
_SESSION_STATUS = {"revoked_key": 403, "wrong_role": 403, "busy": 429}
_cookie_scheme = APIKeyCookie(name=SESSION_COOKIE, auto_error=False, description="the read session (the page's)")
_bearer_scheme = HTTPBearer(auto_error=False, description="the read session's token, for scripts")


def _session_refusal(exc: SessionError) -> ApiRefusal:
    return ApiRefusal(_SESSION_STATUS.get(exc.reason, 401), exc.reason, exc.message)


def _token(
    cookie: Annotated[str | None, Security(_cookie_scheme)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer_scheme)],
) -> str | None:
    return bearer.credentials if bearer is not None else cookie


_TokenDep = Annotated[str | None, Depends(_token)]


async def _reader(request: Request, b: _BoardDep, token: _TokenDep) -> Session:
    """The read session of the request (cookie or bearer token), checked against the registry now."""
    await b.sync()
    sessions: SessionStore = request.app.state.sessions
    try:
        return sessions.check(b.state.keyring, token)
    except SessionError as exc:
        raise _session_refusal(exc) from exc


_ReaderDep = Annotated[Session, Depends(_reader)]


def create_app(
    bus: Bus,
    home: DataDir,
    *,
    board: ApprovalBoard | None = None,
    fingerprint: str | None = None,
    transcriber: Transcriber | None = None,
) -> FastAPI:
    """The API and the page. Without ``board`` the app makes its own, started on first use and
    stopped with the app's lifespan; :class:`ApiServer` passes one it runs itself."""
    own_board = board is None
    the_board = board if board is not None else ApprovalBoard(bus)
    pairing = PairingStore(home.root)
    sessions = SessionStore()
    hearing = transcriber or Transcriber()  # its model loads on the first recording
    hearing_turn = asyncio.Lock()  # one recording at a time (it uses every core), waiting here, not in a thread

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if own_board:
                await the_board.stop()

    app = FastAPI(
        title="symbiote",
        version="1",
        summary="Read the signed event log, post signed events, approve commands from a paired phone.",
        lifespan=lifespan,
        docs_url=None,  # its page loads Swagger UI from a CDN: nothing here reaches the internet
        redoc_url=None,
    )
    app.state.board = the_board
    app.state.sessions = sessions
    app.add_middleware(_SecurityHeaders)

    @app.exception_handler(ApiRefusal)
    async def _on_refusal(_: Request, exc: ApiRefusal) -> JSONResponse:
        return _refusal(exc)

    # FastAPI's own refusals (a malformed body, an unknown path) answer as ours do: {error, detail}
    @app.exception_handler(RequestValidationError)
    async def _on_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        words = error_words(exc.errors(), "the request", skip={"body"})
        return _refusal(ApiRefusal(422, "invalid_request", words or "the request is not valid"))

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "refused")
        body = {"error": reason, "detail": str(exc.detail)}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(BusError)
    async def _on_bus_error(_: Request, exc: BusError) -> JSONResponse:
        if isinstance(exc, IdTakenError):  # another message was stored under this event's id first
            log.warning("api.id_taken", error=str(exc))
            return _refusal(ApiRefusal(409, "id_taken", f"{exc.message}: sign the event anew (a new id)"))
        log.warning("api.bus_unavailable", error=str(exc))
        return _refusal(ApiRefusal(503, "unavailable", f"the event log is not reachable: {exc.message}"))

    @app.get("/api/health", tags=["meta"])
    async def health(b: _BoardDep) -> Health:
        """Liveness, the API's log position and the certificate fingerprint."""
        return Health(
            ok=True, position=b.position, fingerprint=format_fingerprint(fingerprint) if fingerprint else None
        )

    @app.get("/api/events", tags=["log"])
    async def events(
        b: _BoardDep,
        _: _ReaderDep,
        from_seq: Annotated[int, Query(ge=1, description="first stream sequence")] = 1,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        subject: Annotated[str, Query(pattern=r"^sym(\.[A-Za-z0-9_*>-]+)*(\.>)?$|^sym\.>$")] = "sym.>",
    ) -> EventPage:
        """The log from ``from_seq`` on, each event with the principals whose signatures verify."""
        msgs = await bus.history(subject, from_seq, limit)
        if msgs:
            await b.wait_through(msgs[-1].seq)
        rows = [_row(b, m.seq, m.subject, m.data) for m in msgs]
        return EventPage(events=rows, next_seq=(msgs[-1].seq + 1) if msgs else from_seq)

    @app.get("/api/commands", tags=["commands"])
    async def commands(
        b: _BoardDep,
        _: _ReaderDep,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        state: Annotated[str | None, Query(description="only commands in this state")] = None,
    ) -> list[CommandView]:
        """Commands' folded states, the most recently changed first."""
        return b.commands(limit=limit, state=state)

    @app.get("/api/commands/{command_id}", tags=["commands"])
    async def command(b: _BoardDep, _: _ReaderDep, command_id: str) -> CommandDetail:
        """One command's state and its events."""
        life = b.life(command_id)
        if life is None:
            raise ApiRefusal(404, "unknown_command", "no such command", command_id=command_id)
        rows = [_row(b, seq, f"sym.cmd.{command_id}", event.to_wire()) for seq, event in life.events]
        return CommandDetail(command=view_of(life), events=rows)

    @app.get("/api/approvals", tags=["approvals"])
    async def approvals(b: _BoardDep, _: _ReaderDep) -> list[PendingApproval]:
        """Commands waiting for approval: what they do, their risk and sandbox in plain words, who may
        sign and who has, the digest to sign and the proposal's wire bytes to check it against."""
        return b.pending()

    @app.get(
        "/api/approvals/stream",
        tags=["approvals"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def approvals_stream(b: _BoardDep, _: _ReaderDep, token: _TokenDep) -> StreamingResponse:
        """Server-sent events: ``approvals`` (the whole pending list and recent commands, on every
        change) and ``announce`` (one newly pending approval). The stream ends when its session
        does (expired, closed, or its key revoked)."""

        def still_open() -> bool:
            try:
                sessions.check(b.state.keyring, token)
            except SessionError:
                return False
            return True

        return StreamingResponse(
            _sse(b, still_open),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no", "Connection": "close"},
        )

    @app.post("/api/approvals", status_code=202, tags=["approvals"])
    async def answer(b: _BoardDep, submission: Submission) -> AcceptedEvent:
        """Append a user-signed ``command.approved`` / ``command.rejected`` after verifying it."""
        event = _decode_submission(submission)
        command_id = await _check_answer(b, event)
        ack = await bus.publish(event)
        if ack.duplicate:
            raise ApiRefusal(409, "duplicate", "this event was already appended", event_id=event.id)
        log.info("api.answer", event_id=event.id, type=event.type, command_id=command_id, actor=event.actor)
        return AcceptedEvent(id=event.id, type=event.type, seq=ack.seq, command_id=command_id)

    @app.post("/api/requests", status_code=202, tags=["requests"])
    async def request(b: _BoardDep, submission: Submission) -> AcceptedEvent:
        """Append a signed ``input.text`` (typed) or ``input.voice`` (a transcript the person saw)
        after verifying its signature against the registry."""
        event = _decode_submission(submission)
        if event.type not in ("input.text", "input.voice"):
            raise ApiRefusal(400, "wrong_type", f"expected input.text or input.voice, got {event.type}")
        body = _parse(event)
        if not body.text.strip():
            raise ApiRefusal(400, "empty", "the request says nothing")
        _check_clock(event)
        await b.sync()
        _check_signers(b, event, _INPUT_ROLES)
        if b.input_text(event.id) is not None:
            raise ApiRefusal(409, "duplicate", "this request was already appended", event_id=event.id)
        ack = await bus.publish(event)
        if ack.duplicate:
            raise ApiRefusal(409, "duplicate", "this request was already appended", event_id=event.id)
        log.info("api.request", event_id=event.id, actor=event.actor)
        return AcceptedEvent(id=event.id, type=event.type, seq=ack.seq)

    @app.post(
        "/api/transcribe",
        tags=["requests"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"audio/*": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def transcribe(request: Request, _: _ReaderDep) -> Heard:
        """What a recording (any format FFmpeg reads; the page sends WebM/Opus) says, transcribed on
        this machine. Nothing is appended: the page shows the text, and the person signs it as an
        ``input.voice`` and posts it to ``/api/requests``."""
        audio = await request.body()
        if not audio:
            raise ApiRefusal(400, "empty", "send the recording as the request body")
        try:
            async with hearing_turn:
                heard = await hearing.transcribe_async(audio)
        except AudioError as exc:
            raise ApiRefusal(422, exc.reason, exc.message) from exc
        log.info("api.transcribed", audio_ms=heard.audio_ms, seconds=round(heard.seconds, 3))
        return Heard(**heard.body(), seconds=round(heard.seconds, 3))

    @app.post("/api/pair", status_code=201, tags=["pairing"])
    async def pair(b: _BoardDep, body: PairRequest) -> PairResult:
        """Register a phone's public key as the user the one-time code was issued for."""
        try:
            code = normalize_code(body.code)
            public_key_from_kid(body.kid)
        except (PairingError, SignatureError) as exc:
            raise ApiRefusal(400, "malformed", exc.message) from exc
        try:
            proof = b64decode(body.proof)
        except DecodeError as exc:
            raise ApiRefusal(400, "malformed", "proof is not base64") from exc
        if not verify_sig(body.kid, proof, proof_message(code, body.kid)):
            raise ApiRefusal(401, "bad_signature", "the proof is not a signature by this key of the code")
        await b.sync()
        if b.state.keyring.entry(body.kid) is not None:
            raise ApiRefusal(409, "duplicate", "this key is already registered", kid=body.kid)
        try:
            ticket = pairing.claim(code)
        except PairingError as exc:
            raise ApiRefusal(403, "pairing_refused", exc.message) from exc
        try:
            owner = home.load_key("owner")
        except SymbioteError as exc:
            raise ApiRefusal(503, "no_owner_key", f"the API cannot load the owner key: {exc.message}") from exc
        seq = await register_key(bus, owner, body.kid, ticket.principal)
        await b.wait_through(seq)
        entry = b.state.keyring.entry(body.kid)
        if entry is None or entry.registered_seq != seq:
            raise ApiRefusal(500, "not_registered", "the registration was appended but did not take effect", seq=seq)
        pairing.write_receipt(code, {"principal": ticket.principal, "kid": body.kid, "seq": seq})
        log.info("api.paired", principal=ticket.principal, kid=body.kid, seq=seq)
        return PairResult(principal=ticket.principal, kid=body.kid, seq=seq)

    @app.get("/api/session/challenge", tags=["session"])
    async def session_challenge() -> SessionChallenge:
        """A single-use nonce, to sign with a paired key for ``POST /api/session``."""
        return SessionChallenge(nonce=sessions.challenge(), expires_in_s=sessions.challenge_s)

    @app.post("/api/session", status_code=201, tags=["session"])
    async def session_open(b: _BoardDep, body: SessionRequest, response: Response, previous: _TokenDep) -> SessionInfo:
        """Open a read session: the signature of a fresh challenge by a registered, unrevoked user
        (or owner) key. The token comes back as an ``HttpOnly`` cookie; send it as the cookie or as
        ``Authorization: Bearer``."""
        try:
            sig = b64decode(body.sig)
        except DecodeError as exc:
            raise ApiRefusal(400, "malformed", "sig is not base64") from exc
        await b.sync()
        try:
            token, session = sessions.open(b.state.keyring, body.kid, body.nonce, sig)
        except SessionError as exc:
            raise _session_refusal(exc) from exc
        if previous is not None and sessions.close(previous):  # the page signing in again
            the_board.channel.wake()
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=int(sessions.lifetime_s),
            path="/api",
            secure=True,
            httponly=True,
            samesite="strict",
        )
        log.info("api.session", principal=session.principal, kid=session.kid)
        return SessionInfo(principal=session.principal, kid=session.kid, expires_at=session.expires_at)

    @app.get("/api/session", tags=["session"])
    async def session_info(session: _ReaderDep) -> SessionInfo:
        """The principal and end of this request's session."""
        return SessionInfo(principal=session.principal, kid=session.kid, expires_at=session.expires_at)

    @app.delete("/api/session", status_code=204, tags=["session"])
    async def session_close(token: _TokenDep, response: Response) -> None:
        """End this request's session (nothing to end is fine); its streams end too."""
        if sessions.close(token):
            the_board.channel.wake()
        response.delete_cookie(SESSION_COOKIE, path="/api", secure=True, httponly=True, samesite="strict")

    @app.get("/api/keys", tags=["pairing"])
    async def key_info(b: _BoardDep, kid: Annotated[str, Query(description="the kid to look up")]) -> KeyInfo:
        """What ``kid`` is registered as, and whether it is still valid."""
        await b.sync()
        entry = b.state.keyring.entry(kid)
        if entry is None:
            raise ApiRefusal(404, "unknown_key", "this key is not registered", kid=kid)
        return KeyInfo(
            kid=entry.kid,
            principal=entry.principal,
            role=entry.role,
            active=entry.revoked_seq is None,
            registered_seq=entry.registered_seq,
            revoked_seq=entry.revoked_seq,
        )

    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="page")
    return app


# -- verification -----------------------------------------------------------------------------
def _decode_submission(submission: Submission) -> Envelope:
    if (submission.wire is None) == (submission.event is None):
        raise ApiRefusal(400, "malformed", "send exactly one of `wire` and `event`")
    try:
        if submission.wire is not None:
            return from_wire(b64decode(submission.wire))
        assert submission.event is not None
        return envelope_from_json(submission.event)
    except DecodeError as exc:
        raise ApiRefusal(400, "malformed", str(exc)) from exc


def _parse(event: Envelope) -> Any:
    try:
        return parse_body(event)
    except DecodeError as exc:
        raise ApiRefusal(400, "malformed", f"{exc.message}: {exc.fields.get('error', '')}"[:500]) from exc


def _check_clock(event: Envelope) -> None:
    skew = event.at - now_ms()
    if abs(skew) > MAX_CLOCK_SKEW_MS:
        raise ApiRefusal(422, "clock_skew", f"the event's time is {skew / 1000:+.0f} s off the server's clock")


def _check_signers(board: ApprovalBoard, event: Envelope, roles: frozenset[str]) -> None:
    verdict = board.state.keyring.verify(event, board.position + 1)
    if not verdict.ok:
        status = 401 if verdict.reason in _SIGNATURE_REASONS else 403
        raise ApiRefusal(status, verdict.reason or "bad_signature", verdict.detail)
    if event.actor_role not in roles or any(c.role not in roles for c in verdict.checks):
        raise ApiRefusal(403, "wrong_role", f"{event.type} must be signed by {' or '.join(sorted(roles))} keys")


async def _check_answer(board: ApprovalBoard, event: Envelope) -> str:
    """Everything the dispatcher will check, checked now so that a bad answer gets a 4xx instead
    of a denial note in the log. Returns the command id."""
    if event.type not in ("command.approved", "command.rejected"):
        raise ApiRefusal(400, "wrong_type", f"expected command.approved or command.rejected, got {event.type}")
    body = _parse(event)
    assert isinstance(body, (CommandApproved, CommandRejected))
    _check_clock(event)
    await board.sync()
    _check_signers(board, event, frozenset({"user"}))
    life = board.life(body.command_id)
    if life is None or life.proposal is None or life.definition is None:
        raise ApiRefusal(404, "unknown_command", "no such command", command_id=body.command_id)
    if any(e.id == event.id for _, e in life.events):
        raise ApiRefusal(409, "duplicate", "this answer was already appended", event_id=event.id)
    if not life.pending_approval or life.rejected_by:
        state = "rejected" if life.rejected_by else life.summary()["state"]
        raise ApiRefusal(409, "not_pending", f"the command is not awaiting approval (it is {state})")
    if life.approval_expires_at is not None and life.approval_expires_at <= board.clock():
        raise ApiRefusal(409, "expired", "the approval request has expired")
    check = check_approval(board.state, life.proposal, life.definition, event, board.position + 1)
    if isinstance(check, Denial):
        raise ApiRefusal(_DENIAL_STATUS.get(check.reason, 403), check.reason, check.detail)
    if check.approve and check.principal in life.approvals:
        raise ApiRefusal(409, "duplicate", f"{check.principal} has already approved this command")
    return life.command_id


def _row(board: ApprovalBoard, seq: int, subject: str, data: bytes) -> EventRow:
    try:
        event = from_wire(data)
    except DecodeError as exc:
        return EventRow(seq=seq, subject=subject, problem=f"undecodable: {exc}")
    if is_registry_change(subject, event.type):
        verdict = board.registry_verdicts.get(seq)
        if verdict is None:
            return EventRow(seq=seq, subject=subject, event=event_json(event), problem="not applied")
    else:
        verdict = board.state.keyring.verify(event, seq)
    problem = None if verdict.ok else f"{verdict.reason}: {verdict.detail}"
    return EventRow(
        seq=seq,
        subject=subject,
        event=event_json(event),
        verified=verdict.principals if verdict.ok else [],
        problem=problem,
    )


async def _sse(board: ApprovalBoard, still_open: Callable[[], bool]) -> AsyncIterator[bytes]:
    async with board.channel.subscribe() as queue:
        yield b"retry: 2000\n\n"
        yield board.snapshot_message().encode()
        while True:
            try:
                message = await asyncio.wait_for(queue.get(), _KEEP_ALIVE_S)
            except TimeoutError:
                message = WAKE
            if message is None or not still_open():
                return
            yield b": keep-alive\n\n" if message is WAKE else message.encode()


_KEEP_ALIVE_S = 15.0  # also how soon a stream notices that its session expired


# -- the server -------------------------------------------------------------------------------
class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the process that embeds it owns SIGINT / SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        """Install nothing."""
        yield


class ApiServer:
    """The API over HTTPS, in-process: ``async with ApiServer(bus, home, host, port) as api``.

    Creates (once) the self-signed certificate under ``home.tls_dir``. ``port=0`` picks a free
    port. ``url`` is where this machine reaches it, ``public_url`` where a phone on the LAN does,
    ``fingerprint`` the certificate's SHA-256 (``AB:CD:…``).
    """

    def __init__(
        self,
        bus: Bus,
        home: DataDir,
        host: str = "127.0.0.1",
        port: int = 8443,
        *,
        notifiers: Sequence[Notifier] = (),
        present: Callable[[PendingApproval], PendingApproval] | None = None,
        log_level: str = "warning",
    ) -> None:
        self.bus = bus
        self.home = home
        self.host = host
        self.port = port
        self.board = ApprovalBoard(bus, notifiers=notifiers, present=present)
        self.tls: TlsMaterial | None = None
        self.app: FastAPI | None = None
        self.log_level = log_level
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self._state = "new"

    # -- addresses -------------------------------------------------------------------------
    @property
    def bound_port(self) -> int:
        """The port actually listened on (differs from ``port`` when that was 0)."""
        if self._sock is None:
            raise ServerStartError("the API server is not started")
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        """``https://HOST:PORT`` as reachable from this machine."""
        return f"https://{_url_host(_local_host(self.host))}:{self.bound_port}"

    @property
    def public_url(self) -> str:
        """``https://HOST:PORT`` for other devices: a LAN address when listening on all interfaces."""
        host = self.host
        if _unspecified(host):
            addresses = lan_addresses()
            host = addresses[0] if addresses else _local_host(host)
        return f"https://{_url_host(host)}:{self.bound_port}"

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate, ``AB:CD:…``."""
        if self.tls is None:
            raise ServerStartError("the API server is not started")
        return self.tls.fingerprint_colons

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Create the certificate if needed, start the board, listen, and return once serving."""
        if self._state != "new":
            return
        self._state = "starting"
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        self._state = "running"

    async def _start(self) -> None:
        self.tls = ensure_certificate(self.home.tls_dir, hosts=[self.host])
        await self.board.start()
        self.app = create_app(self.bus, self.home, board=self.board, fingerprint=self.tls.fingerprint)
        self._sock = _listen(self.host, self.port)
        config = uvicorn.Config(
            self.app,
            ssl_certfile=str(self.tls.cert_path),
            ssl_keyfile=str(self.tls.key_path),
            log_config=None,
            log_level=self.log_level,
            access_log=False,
            lifespan="off",
            ws="none",
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=2,
        )
        server = _EmbeddedServer(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[self._sock]), name="api-server")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while not server.started:
            if self._task.done():
                error = self._task.exception() if not self._task.cancelled() else None
                raise ServerStartError("the API server did not start", error=repr(error))
            if loop.time() > deadline:
                raise ServerStartError("the API server did not start in time")
            await asyncio.sleep(0.01)
        log.info("api.up", url=self.url, public_url=self.public_url, fingerprint=self.fingerprint)

    async def stop(self) -> None:
        """Stop serving (open streams end), then the board; idempotent."""
        if self._state == "stopped":
            return
        self._state = "stopped"
        self.board.channel.close()
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            await self._finish(self._task)
        await self.board.stop()
        if self._sock is not None:
            self._sock.close()

    async def _finish(self, task: asyncio.Task[None]) -> None:
        """Wait for uvicorn to stop. Connections still open after a short grace are aborted: idle
        keep-alive connections whose peer does not answer the TLS close would otherwise hold the
        shutdown for uvicorn's whole graceful timeout."""
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if not done and self._server is not None:
            for connection in list(self._server.server_state.connections):
                transport = getattr(connection, "transport", None)
                if isinstance(transport, asyncio.WriteTransport):
                    transport.abort()
        try:
            await task
        except (asyncio.CancelledError, SystemExit) as exc:
            log.warning("api.stop", error=repr(exc))

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _unspecified(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")  # noqa: S104 - recognizing the wildcard, not binding it


def _local_host(host: str) -> str:
    if host == "::":
        return "::1"
    if _unspecified(host):
        return "127.0.0.1"
    return host


def _url_host(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it a response's headers and body wait on Nagle + delayed ACK (~40 ms each)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host or "0.0.0.0", port))  # noqa: S104 - an empty host means all interfaces, by request
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ServerStartError("cannot listen for the API", host=host, port=port, error=str(exc)) from exc
    return sock
