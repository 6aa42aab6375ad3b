"""Read sessions: who may read the log through the API.

The log holds everything the person asked and every result, so reading it takes a paired key.
A client asks for a one-time challenge, signs ``b"symbiote/session/v1\\0" + nonce + b"\\0" + kid``
with a registered, unrevoked ``user`` (or ``owner``) key, and gets a random session token (the
page keeps it in an ``HttpOnly`` cookie; scripts may send it as ``Authorization: Bearer``).
Every use checks again that the key is still registered and unrevoked, so revoking a phone's key
ends its sessions at once. Challenges are single-use and short-lived; sessions live in memory
and end with the process (the page then opens a new one with its key).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from symbiote.errors import SymbioteError
from symbiote.signers.keyring import KeyEntry, Keyring
from symbiote.signers.keys import SigningKey, verify_sig

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
    return {"kid": key.kid, "nonce": nonce, "sig": base64.b64encode(sig).decode("ascii")}


class SessionStore:
    """Challenges and sessions, in memory; bounded (the oldest are dropped first)."""

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
        self._challenges: OrderedDict[str, float] = OrderedDict()  # nonce -> expiry (s)
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()  # SHA-256 of the token -> session

    def challenge(self) -> str:
        """A new single-use nonce, valid for ``challenge_s`` seconds."""
        now = self.clock()
        while self._challenges and (
            len(self._challenges) >= self.limit or next(iter(self._challenges.values())) <= now
        ):
            self._challenges.popitem(last=False)
        nonce = secrets.token_urlsafe(32)
        self._challenges[nonce] = now + self.challenge_s
        return nonce

    def open(self, keyring: Keyring, kid: str, nonce: str, sig: bytes) -> tuple[str, Session]:
        """Check the proof and open a session; returns (token, session)."""
        expiry = self._challenges.pop(nonce, None)  # single use, even when the proof fails
        if expiry is None or expiry <= self.clock():
            raise SessionError("the challenge is unknown, used or expired: ask for a new one", "bad_challenge")
        if not verify_sig(kid, sig, session_message(nonce, kid)):
            raise SessionError("the signature does not verify with this key", "bad_signature", kid=kid)
        entry = self._usable(keyring, kid)
        token = secrets.token_urlsafe(32)
        expires_at = int((self.clock() + self.lifetime_s) * 1000)
        session = Session(kid, entry.principal, expires_at)
        while len(self._sessions) >= self.limit:
            self._sessions.popitem(last=False)
        self._sessions[_digest(token)] = session
        return token, session

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
