"""Read sessions: who may read the log through the API.

The log holds everything the person asked and every result, so reading it takes a paired key.
A client asks for a challenge, signs ``b"symbiote/session/v1\\0" + nonce + b"\\0" + kid``
with a registered, unrevoked ``user`` (or ``owner``) key, and gets a random session token (the
page keeps it in an ``HttpOnly`` cookie; scripts may send it as ``Authorization: Bearer``).
Every use checks again that the key is still registered and unrevoked, so revoking a phone's key
ends its sessions at once. Challenges are short-lived and single-use, and stateless until used
(a time, random bytes and an HMAC under a secret of this process), so nobody can crowd out
another client's challenge by asking for many; only the challenges of sessions actually opened
are remembered, until they expire. Sessions live in memory and end with the process (the page
then opens a new one with its key).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from symbiote.api.wire import b64encode
from symbiote.errors import SymbioteError
from symbiote.signers.keyring import KeyEntry, Keyring
from symbiote.signers.keys import SigningKey, b64url, verify_sig

__all__ = [
    "SESSION_COOKIE",
    "SESSION_DOMAIN",
    "SESSION_ROLES",
    "Session",
    "SessionError",
    "SessionStore",
    "session_message",
    "session_proof",
]

SESSION_DOMAIN = b"symbiote/session/v1\x00"
SESSION_COOKIE = "symbiote_session"
SESSION_ROLES = frozenset({"user", "owner"})


class SessionError(SymbioteError):
    """A session refused; ``reason`` is the API's reason code."""

    def __init__(self, message: str, reason: str, **fields: Any) -> None:
        super().__init__(message, reason=reason, **fields)
        self.reason = reason


@dataclass(frozen=True)
class Session:
    """An open read session: the key that opened it and when it ends (Unix ms)."""

    kid: str
    principal: str
    expires_at: int


def session_message(nonce: str, kid: str) -> bytes:
    """What a key signs to open a session with the challenge ``nonce``."""
    return SESSION_DOMAIN + nonce.encode() + b"\x00" + kid.encode()


def session_proof(key: SigningKey, nonce: str) -> dict[str, str]:
    """The body of ``POST /api/session`` for ``key`` and the challenge ``nonce`` (for Python clients)."""
    sig = key.sign(session_message(nonce, key.kid))
    return {"kid": key.kid, "nonce": nonce, "sig": b64encode(sig)}


class SessionStore:
    """Challenges and sessions, in memory; at most ``limit`` sessions (the oldest are dropped first)."""

    def __init__(
        self,
        *,
        lifetime_s: float = 12 * 3600,
        challenge_s: float = 60.0,
        limit: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lifetime_s = lifetime_s
        self.challenge_s = challenge_s
        self.limit = limit
        self.clock = clock
        self._secret = secrets.token_bytes(32)
        self._used: dict[str, float] = {}  # nonces of opened sessions -> their expiry (s)
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()  # SHA-256 of the token -> session

    def challenge(self) -> str:
        """A new nonce, valid once for ``challenge_s`` seconds."""
        stamp = int(self.clock() * 1000).to_bytes(8, "big") + secrets.token_bytes(16)
        return b64url(stamp + self._mac(stamp))

    def open(self, keyring: Keyring, kid: str, nonce: str, sig: bytes) -> tuple[str, Session]:
        """Check the proof and open a session; returns (token, session)."""
        now = self.clock()
        self._forget_used(now)
        expires = self._expiry(nonce)
        if expires is None or expires <= now or nonce in self._used:
            raise SessionError("the challenge is unknown, used or expired: ask for a new one", "bad_challenge")
        if not verify_sig(kid, sig, session_message(nonce, kid)):
            raise SessionError("the signature does not verify with this key", "bad_signature", kid=kid)
        entry = self._usable(keyring, kid)
        if len(self._used) >= self.limit * 10:
            raise SessionError("too many sessions opened just now: try again in a minute", "busy")
        self._used[nonce] = expires
        token = secrets.token_urlsafe(32)
        session = Session(kid, entry.principal, int((now + self.lifetime_s) * 1000))
        while len(self._sessions) >= self.limit:
            self._sessions.popitem(last=False)
        self._sessions[_digest(token)] = session
        return token, session

    def _mac(self, stamp: bytes) -> bytes:
        return hmac.new(self._secret, stamp, hashlib.sha256).digest()[:16]

    def _expiry(self, nonce: str) -> float | None:
        """When ``nonce`` expires, if this process issued it; None otherwise."""
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (ValueError, UnicodeEncodeError):
            return None
        if len(raw) != 40 or b64url(raw) != nonce or not hmac.compare_digest(raw[24:], self._mac(raw[:24])):
            return None  # one spelling per nonce: it is remembered, once used, as that string
        return int.from_bytes(raw[:8], "big") / 1000 + self.challenge_s

    def _forget_used(self, now: float) -> None:
        for nonce in [nonce for nonce, expires in self._used.items() if expires <= now]:
            del self._used[nonce]

    def check(self, keyring: Keyring, token: str | None) -> Session:
        """The session of ``token``, if it is open and its key still registered and unrevoked."""
        if not token:
            raise SessionError("reading needs a session: sign a challenge with a paired key", "no_session")
        key = _digest(token)
        session = self._sessions.get(key)
        if session is None or session.expires_at <= self.clock() * 1000:
            self._sessions.pop(key, None)
            raise SessionError("the session is unknown or has expired: open a new one", "no_session")
        try:
            self._usable(keyring, session.kid)
        except SessionError:
            self._sessions.pop(key, None)
            raise
        return session

    def close(self, token: str | None) -> bool:
        """End the session of ``token``; False if there was none."""
        return bool(token) and self._sessions.pop(_digest(str(token)), None) is not None

    @staticmethod
    def _usable(keyring: Keyring, kid: str) -> KeyEntry:
        entry = keyring.entry(kid)
        if entry is None:
            raise SessionError("this key is not registered", "unknown_key", kid=kid)
        if entry.revoked_seq is not None:
            raise SessionError("this key has been revoked", "revoked_key", kid=kid)
        if entry.role not in SESSION_ROLES:
            raise SessionError(f"{entry.role} keys cannot read through the API", "wrong_role", kid=kid)
        return entry


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
