"""The HTTPS API against a real nats-server, a real dispatcher and the real uvicorn server.

Every write must be a signed event that verifies against the registry; forged, unsigned,
mis-signed and replayed writes get a 4xx and never reach the log.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import typer
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from symbiote.api import (
    ApiServer,
    PairingStore,
    PendingApproval,
    SessionError,
    SessionStore,
    TelegramNotifier,
    create_app,
    describe_risk,
    describe_sandbox,
    ensure_certificate,
    format_telegram_message,
    proof_message,
    session_message,
    session_proof,
)
from symbiote.api.sessions import SESSION_COOKIE
from symbiote.api.tls import CERT_FILE, KEY_FILE
from symbiote.bootstrap import initialize, register_key, revoke_key
from symbiote.bus.envelope import Envelope, from_wire, make_event
from symbiote.bus.ids import now_ms
from symbiote.bus.stream import Bus
from symbiote.cli.pairing import register as register_pair
from symbiote.dispatcher import Dispatcher, Executors
from symbiote.errors import ConfigError
from symbiote.home import DataDir
from symbiote.registry.definition import CommandDefinition
from symbiote.registry.follower import RegistryFollower
from symbiote.registry.state import default_definitions
from symbiote.signers.keyring import KeyEntry, Keyring
from symbiote.signers.keys import SigningKey, sign_event
from tests.helpers import SPOKEN_REQUEST, speak

pytestmark = pytest.mark.timeout(60)


# -- helpers ----------------------------------------------------------------------------------
@dataclass
class Stack:
    bus: Bus
    home: DataDir
    api: ApiServer
    client: httpx.AsyncClient
    dispatcher: Dispatcher


def tls_context(api: ApiServer) -> ssl.SSLContext:
    """Trust exactly the API's self-signed certificate (hostname checked against its SANs)."""
    assert api.tls is not None
    return ssl.create_default_context(cafile=str(api.tls.cert_path))


@pytest_asyncio.fixture
async def stack(nats_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    bus = await Bus.connect(nats_url, name="test-api")
    home = DataDir(tmp_path / "home")
    await initialize(bus, home, name="me")
    try:
        async with (
            Dispatcher(bus, home.load_key("runtime"), Executors(tmp_path / "ws")) as dispatcher,
            ApiServer(bus, home, "127.0.0.1", 0) as api,
            httpx.AsyncClient(base_url=api.url, verify=tls_context(api), timeout=10) as client,
        ):
            await open_session(client, home.load_key("user"))
            yield Stack(bus, home, api, client, dispatcher)
    finally:
        await bus.close()


async def open_session(client: httpx.AsyncClient, key: SigningKey) -> dict[str, Any]:
    """Open a read session with ``key`` (the client keeps the cookie)."""
    nonce = (await client.get("/api/session/challenge")).json()["nonce"]
    resp = await client.post("/api/session", json=session_proof(key, nonce))
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def propose(bus: Bus, home: DataDir, command: str, args: dict[str, Any], *, corr: str | None = None) -> Envelope:
    agent = home.load_key("agent")
    body = {"command": command, "args": args, "confidence": 0.9, "expires_at": now_ms() + 60_000}
    event = sign_event(make_event("command.proposed", agent.principal, body, corr=corr, cause=corr), agent)
    await bus.publish(event)
    return event


def answer(proposal: Envelope, key: SigningKey, *, approve: bool = True, digest: bytes | None = None) -> Envelope:
    kind = "command.approved" if approve else "command.rejected"
    body = {"command_id": proposal.id, "digest": digest if digest is not None else proposal.digest()}
    return sign_event(make_event(kind, key.principal, body, corr=proposal.corr, cause=proposal.id), key)


def wire_b64(event: Envelope) -> dict[str, str]:
    return {"wire": base64.b64encode(event.to_wire()).decode()}


async def command_events(bus: Bus, command_id: str) -> list[Envelope]:
    return [from_wire(m.data) for m in await bus.history(f"sym.cmd.{command_id}.>", 1)]


async def wait_type(bus: Bus, command_id: str, kind: str, timeout: float = 10.0) -> Envelope:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in await command_events(bus, command_id):
            if event.type == kind:
                return event
        await asyncio.sleep(0.02)
    types = [e.type for e in await command_events(bus, command_id)]
    raise AssertionError(f"no {kind} for {command_id}; saw {types}")


async def wait_pending(client: httpx.AsyncClient, command_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = await client.get("/api/approvals")
        resp.raise_for_status()
        for item in resp.json():
            if item["command_id"] == command_id:
                return dict(item)
        await asyncio.sleep(0.02)
    raise AssertionError(f"{command_id} never became pending")


# -- TLS, health, OpenAPI ---------------------------------------------------------------------
async def test_https_with_self_signed_certificate(stack: Stack) -> None:
    api = stack.api
    assert api.url.startswith("https://127.0.0.1:")
    resp = await stack.client.get("/api/health")
    assert resp.status_code == 200
    assert resp.json()["ok"] is True
    cert_pem = (stack.home.tls_dir / CERT_FILE).read_bytes()
    cert = x509.load_pem_x509_certificate(cert_pem)
    der_sha = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER))
    expected = ":".join(f"{b:02X}" for b in der_sha.digest())
    assert api.fingerprint == expected == resp.json()["fingerprint"]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    assert os.stat(stack.home.tls_dir / KEY_FILE).st_mode & 0o777 == 0o600
    # created once: asking again keeps the same certificate
    assert ensure_certificate(stack.home.tls_dir).fingerprint_colons == expected
    # plain http is not served
    with pytest.raises(httpx.HTTPError):
        async with httpx.AsyncClient() as plain:
            await plain.get(api.url.replace("https://", "http://") + "/api/health", timeout=2)
    schema = (await stack.client.get("/openapi.json")).json()
    for path in (
        "/api/events",
        "/api/commands",
        "/api/approvals",
        "/api/approvals/stream",
        "/api/requests",
        "/api/pair",
    ):
        assert path in schema["paths"], path
    assert "post" in schema["paths"]["/api/approvals"]
    page = await stack.client.get("/")
    assert page.status_code == 200
    assert "Pair this phone" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    manifest = await stack.client.get("/manifest.webmanifest")
    assert manifest.json()["display"] == "standalone"


# -- POST /api/requests -----------------------------------------------------------------------
async def test_requests_are_verified_before_they_are_appended(stack: Stack) -> None:
    client, home = stack.client, stack.home
    user = home.load_key("user")
    before = await stack.bus.last_seq()

    good = sign_event(make_event("input.text", user.principal, {"text": "echo hi"}), user)
    resp = await client.post("/api/requests", json=wire_b64(good))
    assert resp.status_code == 202, resp.text
    assert resp.json()["id"] == good.id
    stored = await stack.bus.get(resp.json()["seq"])
    assert stored is not None and stored.data == good.to_wire()

    as_json = sign_event(make_event("input.text", user.principal, {"text": "json form"}), user)
    event_map = {
        **{k: v for k, v in as_json.as_map().items() if k != "sigs"},
        "sigs": [{"kid": s.kid, "sig": base64.b64encode(s.sig).decode()} for s in as_json.sigs],
    }
    resp = await client.post("/api/requests", json={"event": event_map})
    assert resp.status_code == 202, resp.text

    stranger = SigningKey.generate("user:me")  # right name, unregistered key
    agent = home.load_key("agent")
    unsigned = make_event("input.text", user.principal, {"text": "no signature"})
    tampered = sign_event(make_event("input.text", user.principal, {"text": "harmless"}), user)
    tampered = tampered.model_copy(update={"body": {"text": "rm -rf ~"}})
    old = sign_event(make_event("input.text", user.principal, {"text": "old"}, at=now_ms() - 3_600_000), user)
    wrong_type = sign_event(
        make_event("command.approved", user.principal, {"command_id": good.id, "digest": bytes(32)}), user
    )
    refused = [
        (sign_event(make_event("input.text", user.principal, {"text": "forged"}), stranger), 401, "unknown_key"),
        (tampered, 401, "bad_signature"),
        (unsigned, 401, "bad_signature"),
        (sign_event(make_event("input.text", agent.principal, {"text": "agent"}), agent), 403, "wrong_role"),
        (old, 422, "clock_skew"),
        (wrong_type, 400, "wrong_type"),
        (good, 409, "duplicate"),
    ]
    for event, status, reason in refused:
        resp = await client.post("/api/requests", json=wire_b64(event))
        assert (resp.status_code, resp.json()["error"]) == (status, reason), (event.body, resp.text)
        assert resp.json()["detail"]

    huge = await client.post(
        "/api/requests", content=b"x" * (1024 * 1024 + 1), headers={"content-type": "application/json"}
    )
    assert (huge.status_code, huge.json()["error"]) == (413, "too_large")
    assert huge.headers["x-content-type-options"] == "nosniff" and "content-security-policy" in huge.headers

    async def chunked() -> AsyncIterator[bytes]:  # no length to check up front
        for _ in range(64):
            yield b"x" * 65536

    for path in ("/api/requests", "/api/pair", "/api/session", "/api/transcribe"):
        resp = await client.post(path, content=chunked(), headers={"content-type": "application/json"})
        assert (resp.status_code, resp.json()["error"]) == (413, "too_large"), path

    noncanonical = base64.b64encode(json.dumps({"not": "msgpack"}).encode()).decode()
    for body in ({"wire": noncanonical}, {"wire": "%%%"}, {}, {**wire_b64(good), "event": event_map}):
        resp = await client.post("/api/requests", json=body)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"] == "malformed"

    # exactly the two verified requests reached the log
    appended = [from_wire(m.data) for m in await stack.bus.history("sym.in.>", before + 1)]
    assert [e.body["text"] for e in appended] == ["echo hi", "json form"]


# -- speaking from the phone: POST /api/transcribe, then a signed input.voice -------------------
async def test_a_recording_is_transcribed_then_signed_as_voice_input(stack: Stack, tmp_path: Path) -> None:
    speech = speak(SPOKEN_REQUEST, tmp_path / "speech.wav")
    before = await stack.bus.last_seq()
    async with httpx.AsyncClient(base_url=stack.api.url, verify=tls_context(stack.api), timeout=30) as stranger:
        refused = await stranger.post("/api/transcribe", content=speech.read_bytes())
        assert (refused.status_code, refused.json()["error"]) == (401, "no_session")
    resp = await stack.client.post(
        "/api/transcribe", content=speech.read_bytes(), headers={"content-type": "audio/wav"}
    )
    assert resp.status_code == 200, resp.text
    heard = resp.json()
    assert "good morning" in heard["text"].lower() and heard["audio_ms"] > 1000, heard
    assert (heard["model"], heard["language"]) == ("tiny.en", "en")
    for bad, status, reason in ((b"", 400, "empty"), (bytes(range(256)) * 20, 422, "undecodable_audio")):
        resp = await stack.client.post("/api/transcribe", content=bad)
        assert (resp.status_code, resp.json()["error"]) == (status, reason), resp.text
    assert await stack.bus.last_seq() == before  # transcribing appends nothing

    user = stack.home.load_key("user")
    body = {k: heard[k] for k in ("text", "audio_ms", "model", "language")}
    spoken = sign_event(make_event("input.voice", user.principal, body), user)
    resp = await stack.client.post("/api/requests", json=wire_b64(spoken))
    assert resp.status_code == 202, resp.text
    silent = sign_event(make_event("input.voice", user.principal, {**body, "text": " "}), user)
    resp = await stack.client.post("/api/requests", json=wire_b64(silent))
    assert (resp.status_code, resp.json()["error"]) == (400, "empty")
    appended = [(m.subject, from_wire(m.data).id) for m in await stack.bus.history("sym.in.>", before + 1)]
    assert appended == [("sym.in.voice", spoken.id)]


# -- GET /api/events, /api/commands ------------------------------------------------------------
async def test_events_are_paged_and_verified(stack: Stack) -> None:
    first = (await stack.client.get("/api/events", params={"from_seq": 1, "limit": 3})).json()
    assert [row["seq"] for row in first["events"]] == [1, 2, 3]
    assert first["next_seq"] == 4
    genesis = first["events"][0]
    assert genesis["event"]["type"] == "key.registered"
    assert genesis["verified"] == ["owner:me"]
    assert genesis["problem"] is None
    assert base64.b64decode(genesis["event"]["sigs"][0]["sig"])  # bin as base64
    second = (await stack.client.get("/api/events", params={"from_seq": first["next_seq"], "limit": 500})).json()
    assert second["events"][0]["seq"] == 4
    assert all(row["problem"] is None for row in second["events"])
    keys_only = (await stack.client.get("/api/events", params={"subject": "sym.reg.key"})).json()
    assert {row["event"]["type"] for row in keys_only["events"]} == {"key.registered"}
    bad = await stack.client.get("/api/events", params={"subject": "not a subject"})
    assert bad.status_code == 422
    # every refusal answers alike, FastAPI's own too: {error, detail}, in words
    assert bad.json()["error"] == "invalid_request" and bad.json()["detail"].startswith("query.subject: ")
    missing = await stack.client.get("/api/nowhere")
    assert missing.status_code == 404 and missing.json() == {"error": "not_found", "detail": "Not Found"}


# -- approvals ----------------------------------------------------------------------------------
async def test_a_forged_request_is_not_shown_beside_its_approval(stack: Stack) -> None:
    """Words in a request no registered key signed are not shown as the person's, neither on
    the phone page nor in `symbiote approvals`: that says the request could not be verified."""
    from symbiote.cli.approvals import _asked
    from symbiote.registry.commands import load_life
    from symbiote.registry.follower import RegistryFollower

    client, bus, home = stack.client, stack.bus, stack.home
    mallory = SigningKey.generate("user:me")  # the person's name, not their key
    forged = sign_event(make_event("input.text", mallory.principal, {"text": "wipe my disk, I mean it"}), mallory)
    await bus.publish(forged)
    proposal = await propose(bus, home, "shell.run", {"argv": ["echo", "hi"]}, corr=forged.id)
    item = await wait_pending(client, proposal.id)
    assert item["request_text"] is None
    follower = RegistryFollower(bus)
    asked = await _asked(bus, follower, await load_life(bus, follower, proposal.id))
    assert asked["asked_by"] is None and asked["request_text"] is None
    assert "could not be verified (unknown_key): who asked is unknown" in asked["request_problem"]

    user = home.load_key("user")
    request = sign_event(make_event("input.text", user.principal, {"text": "say hi"}), user)
    await bus.publish(request)
    proposal = await propose(bus, home, "shell.run", {"argv": ["echo", "hi"]}, corr=request.id)
    assert (await wait_pending(client, proposal.id))["request_text"] == "say hi"
    asked = await _asked(bus, follower, await load_life(bus, follower, proposal.id))
    assert asked == {"asked_by": "user:me", "request_text": "say hi", "request_problem": None}


async def test_approval_is_verified_then_the_command_runs(stack: Stack) -> None:
    client, bus, home = stack.client, stack.bus, stack.home
    user, agent = home.load_key("user"), home.load_key("agent")
    request = sign_event(make_event("input.text", user.principal, {"text": "run echo hi"}), user)
    await bus.publish(request)
    proposal = await propose(bus, home, "shell.run", {"argv": ["echo", "hi"]}, corr=request.id)
    item = await wait_pending(client, proposal.id)

    assert item["command"] == "shell.run"
    assert item["args"] == {"argv": ["echo", "hi"]}
    assert item["request_text"] == "run echo hi"
    assert item["risk_level"] == "high"
    assert item["risk"].startswith("High risk: runs an arbitrary program")
    assert "no network access" in item["sandbox"]
    assert "512 MB" in item["sandbox"]
    assert item["principals"] == ["user:me"]
    assert item["needs"] == 1
    assert item["signed_by"] == []
    assert item["digest"] == proposal.digest().hex()
    assert from_wire(base64.b64decode(item["proposal_wire"])) == proposal
    assert item["expires_at"] > now_ms()

    stranger = SigningKey.generate("user:me")
    other = await propose(bus, home, "shell.run", {"argv": ["true"]})
    await wait_pending(client, other.id)
    refused = [
        (answer(proposal, stranger), 401, "unknown_key"),
        (answer(proposal, agent), 403, "wrong_role"),
        (answer(proposal, user, digest=other.digest()), 422, "approval_digest_mismatch"),
        (answer(proposal, user).model_copy(update={"actor": "user:someone"}), 401, "bad_signature"),
        (
            make_event("command.approved", user.principal, {"command_id": proposal.id, "digest": proposal.digest()}),
            401,
            "bad_signature",
        ),
    ]
    unknown = make_event(
        "command.proposed", agent.principal, {"command": "echo", "args": {}, "confidence": 1.0, "expires_at": 1}
    )
    refused.append((answer(unknown, user), 404, "unknown_command"))
    for event, status, reason in refused:
        resp = await client.post("/api/approvals", json=wire_b64(event))
        assert (resp.status_code, resp.json()["error"]) == (status, reason), resp.text
    assert [e.type for e in await command_events(bus, proposal.id)] == [
        "command.proposed",
        "command.approval_requested",
    ]

    good = answer(proposal, user)
    resp = await client.post("/api/approvals", json=wire_b64(good))
    assert resp.status_code == 202, resp.text
    assert resp.json()["command_id"] == proposal.id
    succeeded = await wait_type(bus, proposal.id, "command.succeeded")
    assert succeeded.body["output"]["stdout"] == "hi\n"
    types = [e.type for e in await command_events(bus, proposal.id)]
    assert types == [
        "command.proposed",
        "command.approval_requested",
        "command.approved",
        "command.started",
        "command.succeeded",
    ]

    again = await client.post("/api/approvals", json=wire_b64(good))
    assert (again.status_code, again.json()["error"]) == (409, "duplicate")
    late = await client.post("/api/approvals", json=wire_b64(answer(proposal, user)))
    assert (late.status_code, late.json()["error"]) == (409, "not_pending")

    pending_ids = [p["command_id"] for p in (await client.get("/api/approvals")).json()]
    assert proposal.id not in pending_ids and other.id in pending_ids
    commands = (await client.get("/api/commands")).json()
    states = {c["command_id"]: c for c in commands}
    assert states[proposal.id]["state"] == "succeeded"
    assert states[proposal.id]["approvals"] == ["user:me"]
    assert states[proposal.id]["output"] == "hi"
    assert states[other.id]["state"] == "awaiting_approval"
    only = (await client.get("/api/commands", params={"state": "succeeded"})).json()
    assert [c["command_id"] for c in only] == [proposal.id]
    detail = (await client.get(f"/api/commands/{proposal.id}")).json()
    assert [row["event"]["type"] for row in detail["events"]] == types
    assert detail["events"][2]["verified"] == ["user:me"]
    assert (await client.get(f"/api/commands/{request.id}")).status_code == 404


async def test_rejection_denies_the_command(stack: Stack) -> None:
    user = stack.home.load_key("user")
    proposal = await propose(stack.bus, stack.home, "shell.run", {"argv": ["touch", "never"]})
    await wait_pending(stack.client, proposal.id)
    resp = await stack.client.post("/api/approvals", json=wire_b64(answer(proposal, user, approve=False)))
    assert resp.status_code == 202, resp.text
    denied = await wait_type(stack.bus, proposal.id, "command.denied")
    assert denied.body["reason"] == "rejected_by_user"
    assert denied.cause == proposal.id
    assert "command.started" not in [e.type for e in await command_events(stack.bus, proposal.id)]
    await stack.api.board.sync()  # the API's view has read as far as the log holds
    view = (await stack.client.get(f"/api/commands/{proposal.id}")).json()["command"]
    assert view["state"] == "denied" and view["reason"] == "rejected_by_user"


async def test_an_approval_whose_id_was_taken_first_is_refused_as_such(stack: Stack) -> None:
    """Something else was stored under the approval's id first: the server drops the approval as
    a duplicate; the API says so (409 id_taken) instead of accepting what was never stored."""
    user = stack.home.load_key("user")
    proposal = await propose(stack.bus, stack.home, "shell.run", {"argv": ["touch", "later"]})
    await wait_pending(stack.client, proposal.id)
    approval = answer(proposal, user, approve=True)
    squat = sign_event(make_event("input.text", user.principal, {"text": "anything"}), user)
    await stack.bus.publish_raw("sym.in.text", squat.to_wire(), msg_id=approval.id)
    resp = await stack.client.post("/api/approvals", json=wire_b64(approval))
    assert (resp.status_code, resp.json()["error"]) == (409, "id_taken"), resp.text
    assert "sign the event anew" in resp.json()["detail"]
    again = await stack.client.post("/api/approvals", json=wire_b64(answer(proposal, user, approve=True)))
    assert again.status_code == 202, again.text  # signed anew: a new id
    assert (await wait_type(stack.bus, proposal.id, "command.started")).cause == proposal.id


async def test_stream_shows_new_approvals_within_a_second(stack: Stack) -> None:
    async with stack.client.stream("GET", "/api/approvals/stream") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = resp.aiter_lines()
        first = await _next_event(lines)
        assert first[0] == "approvals"
        assert first[1]["pending"] == []
        started = time.monotonic()
        proposal = await propose(stack.bus, stack.home, "shell.run", {"argv": ["echo", "sse"]})
        seen: dict[str, float] = {}
        while "approvals" not in seen or "announce" not in seen:
            name, data = await asyncio.wait_for(_next_event(lines), 15.0)
            if name == "approvals" and any(p["command_id"] == proposal.id for p in data["pending"]):
                seen.setdefault("approvals", time.monotonic() - started)
            if name == "announce" and data["command_id"] == proposal.id:
                seen.setdefault("announce", time.monotonic() - started)
        assert seen["approvals"] < 1.0, seen
        assert seen["announce"] < 1.0, seen
        # the stream ends when the server stops (and stopping twice is fine)
        stopping = asyncio.create_task(stack.api.stop())
        async with asyncio.timeout(5):
            async for _ in lines:
                pass
            await stopping
        await stack.api.stop()


# -- read sessions ------------------------------------------------------------------------------
_READS = ("/api/events", "/api/commands", "/api/approvals", "/api/approvals/stream", "/api/session")


async def test_reading_the_log_needs_a_session_of_a_paired_key(stack: Stack) -> None:
    proposal = await propose(stack.bus, stack.home, "shell.run", {"argv": ["echo", "private"]})
    user, agent = stack.home.load_key("user"), stack.home.load_key("agent")
    async with httpx.AsyncClient(base_url=stack.api.url, verify=tls_context(stack.api), timeout=10) as stranger:
        for path in (*_READS, f"/api/commands/{proposal.id}"):
            resp = await stranger.get(path)
            assert resp.status_code == 401, (path, resp.text)
            assert resp.json()["error"] == "no_session"
            assert "private" not in resp.text
        for path in ("/api/health", f"/api/keys?kid={user.kid}", "/api/session/challenge"):
            assert (await stranger.get(path)).status_code == 200, path
        assert (await stranger.get("/api/events", headers={"authorization": "Bearer made-up"})).status_code == 401

        async def proof(key: SigningKey, signer: SigningKey | None = None) -> dict[str, str]:
            nonce = (await stranger.get("/api/session/challenge")).json()["nonce"]
            body = session_proof(signer or key, nonce)
            return {**body, "kid": key.kid}

        refusals = [
            (await proof(user, SigningKey.generate("user:me")), 401, "bad_signature"),
            (await proof(SigningKey.generate("user:me")), 401, "unknown_key"),
            (await proof(agent), 403, "wrong_role"),
            ({**await proof(user), "nonce": "never-issued"}, 401, "bad_challenge"),
        ]
        for body, status, reason in refusals:
            resp = await stranger.post("/api/session", json=body)
            assert (resp.status_code, resp.json()["error"]) == (status, reason), resp.text
        assert not stranger.cookies
        good = await proof(user)
        opened = await stranger.post("/api/session", json=good)
        assert opened.status_code == 201, opened.text
        assert opened.json()["principal"] == "user:me"
        cookie = opened.headers["set-cookie"].lower()
        assert all(flag in cookie for flag in ("httponly", "secure", "samesite=strict", "path=/api"))
        assert (await stranger.post("/api/session", json=good)).json()["error"] == "bad_challenge"  # single use
        assert (await stranger.get(f"/api/commands/{proposal.id}")).json()["command"]["command"] == "shell.run"
        assert (await stranger.get("/api/session")).json()["kid"] == user.kid
        token = stranger.cookies[SESSION_COOKIE]
    # scripts send the token as a bearer token
    async with httpx.AsyncClient(base_url=stack.api.url, verify=tls_context(stack.api), timeout=10) as script:
        bearer = {"authorization": f"Bearer {token}"}
        assert (await script.get("/api/events", headers=bearer)).status_code == 200
        assert (await script.delete("/api/session", headers=bearer)).status_code == 204
        assert (await script.get("/api/events", headers=bearer)).json()["error"] == "no_session"


async def test_revoking_a_key_ends_its_sessions_and_streams(stack: Stack) -> None:
    # a stream ends at once (not at its next keep-alive, 15 s away) when its session is closed
    async with stack.client.stream("GET", "/api/approvals/stream") as resp:
        lines = resp.aiter_lines()
        assert (await _next_event(lines))[0] == "approvals"
        async with httpx.AsyncClient(base_url=stack.api.url, verify=tls_context(stack.api), timeout=10) as other:
            await open_session(other, stack.home.load_key("user"))
            assert (await other.delete("/api/session")).status_code == 204
        assert (await stack.client.get("/api/session")).status_code == 200  # only that session ended
        await stack.client.delete("/api/session")
        async with asyncio.timeout(5):
            async for _ in lines:
                pass
    phone = SigningKey.generate("user:me")
    owner = stack.home.load_key("owner")
    await register_key(stack.bus, owner, phone.kid, phone.principal)
    async with httpx.AsyncClient(base_url=stack.api.url, verify=tls_context(stack.api), timeout=10) as client:
        await open_session(client, phone)
        assert (await client.get("/api/approvals")).status_code == 200
        async with client.stream("GET", "/api/approvals/stream") as resp:
            lines = resp.aiter_lines()
            assert (await _next_event(lines))[0] == "approvals"
            await revoke_key(stack.bus, owner, phone.kid, phone.principal)
            async with asyncio.timeout(5):  # the stream ends, without the server stopping
                async for _ in lines:
                    pass
        resp = await client.get("/api/approvals")
        assert (resp.status_code, resp.json()["error"]) == (401, "no_session")  # the session was dropped
        nonce = (await client.get("/api/session/challenge")).json()["nonce"]
        again = await client.post("/api/session", json=session_proof(phone, nonce))
        assert (again.status_code, again.json()["error"]) == (403, "revoked_key")


def test_sessions_expire_and_stay_bounded() -> None:
    now = [1000.0]
    store = SessionStore(lifetime_s=60, challenge_s=5, limit=3, clock=lambda: now[0])
    keyring = Keyring()
    key = SigningKey.generate("user:me")
    keyring.keys[key.kid] = KeyEntry(key.kid, key.principal, "user", registered_seq=1)

    def open_with(nonce: str) -> str:
        return store.open(keyring, key.kid, nonce, key.sign(session_message(nonce, key.kid)))[0]

    def refusal(nonce: str) -> str:
        with pytest.raises(SessionError) as refused:
            open_with(nonce)
        return refused.value.reason

    early = store.challenge()
    flood = [store.challenge() for _ in range(5000)]  # asking for many crowds out nobody's
    assert open_with(early) and open_with(flood[-1])
    assert refusal(early) == "bad_challenge"  # single use
    forged = early[:-2] + ("AA" if not early.endswith("AA") else "BB")
    assert refusal(forged) == refusal("not-a-nonce") == refusal("") == "bad_challenge"
    again = store.challenge()
    assert open_with(again)
    for spelling in (again + "==", again[:10] + "!" + again[10:], again[:-1] + chr(ord(again[-1]) ^ 1)):
        assert refusal(spelling) == "bad_challenge", spelling  # the same bytes, another spelling
    late = store.challenge()
    now[0] += 6
    assert refusal(late) == "bad_challenge"  # expired
    other = SessionStore(clock=lambda: now[0]).challenge()
    assert refusal(other) == "bad_challenge"  # issued by another process
    tokens = [open_with(store.challenge()) for _ in range(4)]
    with pytest.raises(SessionError):
        store.check(keyring, tokens[0])  # the oldest session was dropped to stay within the limit
    assert store.check(keyring, tokens[3]).principal == "user:me"
    now[0] += 61
    with pytest.raises(SessionError) as expired:
        store.check(keyring, tokens[3])
    assert expired.value.reason == "no_session"


async def _next_event(lines: AsyncIterator[str]) -> tuple[str, Any]:
    name, data = "", []
    async for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and name:
            return name, json.loads("\n".join(data))
    raise AssertionError("stream ended")


# -- notifiers ----------------------------------------------------------------------------------
class Recorder:
    """A real notifier that keeps what it was told."""

    def __init__(self) -> None:
        self.seen: list[PendingApproval] = []

    async def announce(self, request: PendingApproval) -> None:
        self.seen.append(request)


async def test_notifiers_hear_of_live_requests_only(nats_url: str, tmp_path: Path) -> None:
    bus = await Bus.connect(nats_url)
    home = DataDir(tmp_path / "home")
    await initialize(bus, home, name="me")
    try:
        async with Dispatcher(bus, home.load_key("runtime"), Executors(tmp_path / "ws")):
            old = await propose(bus, home, "shell.run", {"argv": ["true"]})
            await wait_type(bus, old.id, "command.approval_requested")
            recorder = Recorder()
            async with ApiServer(bus, home, "127.0.0.1", 0, notifiers=[recorder]) as api:
                assert [p.command_id for p in api.board.pending()] == [old.id]
                new = await propose(bus, home, "shell.run", {"argv": ["true"]})
                await api.board.wait_for(lambda: len(recorder.seen) > 0, timeout=30)
                await asyncio.sleep(0.2)
                assert [p.command_id for p in recorder.seen] == [new.id]  # not the one from before the start
                assert recorder.seen[0].risk_level == "high"
    finally:
        await bus.close()


def _pending(**changes: Any) -> PendingApproval:
    base: dict[str, Any] = {
        "command_id": "0195f3c2-6d3b-7000-8000-000000000001",
        "command": "shell.run",
        "args": {"argv": ["rm", "-rf", "secret-dir"]},
        "proposed_by": "agent:main",
        "risk_level": "high",
        "risk": "High risk: runs an arbitrary program",
        "sandbox": "Runs in a sandbox",
        "policy": "needs 1 approval(s)",
        "needs": 1,
        "principals": ["user:alice"],
        "signed_by": [],
        "digest": "00" * 32,
        "proposal_wire": "",
    }
    return PendingApproval(**{**base, **changes})


def test_telegram_message_only_links_to_the_page() -> None:
    request = _pending()
    text = format_telegram_message(request, "https://192.0.2.2:8443")
    assert "https://192.0.2.2:8443/#command=0195f3c2-6d3b-7000-8000-000000000001" in text
    assert "shell.run" in text and "high risk" in text
    assert "secret-dir" not in text  # arguments stay on the page
    notifier = TelegramNotifier("123:token", 42, "https://192.0.2.2:8443")
    params = notifier.message(request)
    assert set(params) == {"chat_id", "text", "link_preview_options"}  # no reply_markup: no buttons
    assert "reply_markup" not in params and "callback" not in json.dumps(params)
    assert params["text"] == text
    with pytest.raises(ConfigError):
        TelegramNotifier("123:token", 42, "http://insecure")


def test_plain_words() -> None:
    by_name = {d.name: d for d in default_definitions()}
    assert describe_risk(by_name["shell.run"])[0] == "high"
    assert describe_risk(by_name["echo"]) == ("none", "No risk: only repeats the text")
    assert "inside symbiote" in describe_sandbox(by_name["echo"])
    words = describe_sandbox(by_name["shell.run"])
    assert "no network access" in words and "30 s" in words and "rolled back" in words
    net = CommandDefinition(name="fetch", description="d", executor="shell", sandbox={"network": ["example.org"]})
    assert "network access only to example.org" in describe_sandbox(net)
    assert describe_risk(None)[0] == "unknown"


# -- pairing ------------------------------------------------------------------------------------
async def test_pairing_registers_the_phone_key_once(stack: Stack) -> None:
    client, home = stack.client, stack.home
    store = PairingStore(home.root)
    code, _ = store.create("user:alice")
    phone = SigningKey.generate("user:alice")

    def request(key: SigningKey, code_: str, proof_key: SigningKey | None = None) -> dict[str, str]:
        signer = proof_key or key
        proof = signer.sign(proof_message(code_, key.kid))
        return {"code": code_, "kid": key.kid, "proof": base64.b64encode(proof).decode()}

    bad_proof = await client.post("/api/pair", json=request(phone, code, proof_key=SigningKey.generate("user:x")))
    assert (bad_proof.status_code, bad_proof.json()["error"]) == (401, "bad_signature")
    assert store.exists(code)  # a bad proof does not use up the code
    wrong = await client.post("/api/pair", json=request(phone, "AAAAA-AAAAA"))
    assert (wrong.status_code, wrong.json()["error"]) == (403, "pairing_refused")
    malformed = await client.post("/api/pair", json={"code": "nope", "kid": phone.kid, "proof": "AA=="})
    assert malformed.status_code == 400

    resp = await client.post("/api/pair", json=request(phone, code.lower().replace("-", " ")))
    assert resp.status_code == 201, resp.text
    assert resp.json()["principal"] == "user:alice"
    state = await RegistryFollower(stack.bus).refresh()
    entry = state.keyring.entry(phone.kid)
    assert entry is not None and entry.principal == "user:alice" and entry.role == "user"
    assert store.take_receipt(code) == {"principal": "user:alice", "kid": phone.kid, "seq": resp.json()["seq"]}
    info = (await client.get("/api/keys", params={"kid": phone.kid})).json()
    assert info["principal"] == "user:alice" and info["active"] is True

    reuse = await client.post("/api/pair", json=request(SigningKey.generate("user:alice"), code))
    assert (reuse.status_code, reuse.json()["error"]) == (403, "pairing_refused")
    again = await client.post("/api/pair", json=request(phone, store.create("user:alice")[0]))
    assert (again.status_code, again.json()["error"]) == (409, "duplicate")

    short, _ = store.create("user:bob", ttl_s=1)
    await asyncio.sleep(1.05)
    expired = await client.post("/api/pair", json=request(SigningKey.generate("user:bob"), short))
    assert (expired.status_code, expired.json()["error"]) == (403, "pairing_refused")
    assert "expired" in expired.json()["detail"]
    assert not store.exists(short)
    unknown = await client.get("/api/keys", params={"kid": SigningKey.generate("user:z").kid})
    assert unknown.status_code == 404


def test_cli_pair_prints_code_url_fingerprint_and_qr(tmp_path: Path) -> None:
    home = DataDir(tmp_path / "home")
    home.ensure()
    keys_app = typer.Typer()
    register_pair(keys_app)
    keys_app.command("noop")(lambda: None)  # a group with two commands keeps `pair` as a subcommand
    runner = CliRunner()

    no_cert = runner.invoke(keys_app, ["pair", "--name", "alice", "--data-dir", str(home.root), "--url", "https://h:1"])
    assert no_cert.exit_code == 1
    no_url = runner.invoke(keys_app, ["pair", "--name", "alice", "--data-dir", str(home.root)])
    assert no_url.exit_code == 1 and "not running" in no_url.output
    bad_name = runner.invoke(keys_app, ["pair", "--name", "Alice!", "--data-dir", str(home.root)])
    assert bad_name.exit_code == 2

    tls = ensure_certificate(home.tls_dir)
    args = ["pair", "--name", "alice", "--data-dir", str(home.root), "--url", "https://0.0.0.0:8443", "--no-wait"]
    result = runner.invoke(keys_app, args)
    assert result.exit_code == 0, result.output
    out = result.output
    link = next(word for word in out.split() if word.startswith("https://"))
    assert "0.0.0.0" not in link  # a wildcard host becomes a LAN address
    assert f"fp={tls.fingerprint}" in link
    code = link.split("#pair=")[1].split("&")[0]
    assert tls.fingerprint_colons in out, repr(out[:600])
    assert "▀" in out or "█" in out or "▄" in out  # the QR code
    ticket = PairingStore(home.root).claim(code)
    assert ticket.principal == "user:alice"
    assert ticket.expires_at - now_ms() > 9 * 60 * 1000

    # waiting: the command returns once the API has left its receipt
    runtime = {"api_url": "https://127.0.0.1:8443", "pid": os.getpid()}
    home.write_runtime(runtime)
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome["result"] = runner.invoke(keys_app, ["pair", "--name", "bob", "--data-dir", str(home.root), "--no-qr"])

    thread = threading.Thread(target=run)
    thread.start()
    store = PairingStore(home.root)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not list(store.dir.glob("*.json")):
        time.sleep(0.05)
    ticket_file = next(store.dir.glob("*.json"))
    ticket_file.unlink()  # claimed
    receipt_name = ticket_file.name.replace(".json", ".done.json")
    (store.dir / receipt_name).write_text(json.dumps({"principal": "user:bob", "kid": "ed25519:k", "seq": 9}))
    thread.join(10)
    result = outcome["result"]
    assert result.exit_code == 0, result.output
    assert "paired: user:bob" in result.output


# -- the app on its own ---------------------------------------------------------------------------
async def test_create_app_over_asgi(nats_url: str, tmp_path: Path) -> None:
    """create_app without a server: it makes and starts its own board on first use."""
    bus = await Bus.connect(nats_url)
    home = DataDir(tmp_path / "home")
    await initialize(bus, home, name="me")
    app = create_app(bus, home)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
            resp = await client.get("/api/health")
            assert resp.json()["position"] == await bus.last_seq()
            kid = home.load_key("user").kid
            assert (await client.get("/api/keys", params={"kid": kid})).json()["principal"] == "user:me"
            # another owner-registered user shows up at once
            newcomer = SigningKey.generate("user:carol")
            await register_key(bus, home.load_key("owner"), newcomer.kid, newcomer.principal)
            assert (await client.get("/api/keys", params={"kid": newcomer.kid})).json()["principal"] == "user:carol"
    finally:
        await app.state.board.stop()
        await bus.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_keys_pair_stopped_by_a_signal_cancels_its_code(tmp_path: Path, sig: int) -> None:
    """Closing the terminal (SIGHUP) or `kill` (SIGTERM) cancels the code as Ctrl-C does."""
    home = DataDir(tmp_path / "home")
    home.ensure()
    ensure_certificate(home.tls_dir)
    args = ["keys", "pair", "--name", "carol", "--data-dir", str(home.root), "--url", "https://127.0.0.1:1", "--no-qr"]
    proc = subprocess.Popen([sys.executable, "-m", "symbiote.cli", *args], stdout=subprocess.PIPE, text=True)
    store = PairingStore(home.root)
    try:
        assert proc.stdout is not None
        while "Waiting for the phone" not in proc.stdout.readline():
            assert proc.poll() is None
        assert list(store.dir.glob("*.json"))
        proc.send_signal(sig)
        assert proc.wait(20) == 130
    finally:
        proc.kill()
    assert list(store.dir.glob("*.json")) == []  # the code no longer works


def test_a_question_or_a_suggestion_is_not_shown_as_a_proposed_command() -> None:
    from symbiote.api.models import view_of
    from symbiote.registry.policy import CommandLife

    for kind, body, state in (
        ("command.clarify", {"question": "which file?"}, "asked_back"),
        ("command.suggested", {"request": "book a flight", "suggestion": {}}, "suggested"),
    ):
        command_id = "01a23c4c-dd2c-7000-8000-0123456789ab"
        life = CommandLife(command_id)
        life.events.append((5, make_event(kind, "agent:main", {"command_id": command_id, **body})))
        assert view_of(life).state == state
    assert view_of(CommandLife(command_id)).state == "proposed"
