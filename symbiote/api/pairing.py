"""One-time pairing codes, handed from ``symbiote keys pair`` to the API through the data dir.

The CLI writes ``<data dir>/pairing/<sha256(code)>.json`` (principal, expiry); the code
itself is never stored. The API claims a ticket atomically (a rename only one caller can
win), so a code is used at most once, and refuses it after it expires. A phone proves it
holds the private key of the kid it pairs by signing :func:`proof_message`. When pairing
completes the API leaves a receipt (``<hash>.done.json``) the CLI may read to report it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from symbiote.bus.ids import now_ms
from symbiote.errors import ConfigError, SymbioteError
from symbiote.files import write_private
from symbiote.signers.keys import valid_name

__all__ = [
    "CODE_ALPHABET",
    "DEFAULT_TTL_S",
    "PAIR_DOMAIN",
    "PairingError",
    "PairingStore",
    "PairingTicket",
    "new_code",
    "normalize_code",
    "pairing_url",
    "proof_message",
    "valid_name",
]

CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
CODE_LENGTH = 10  # 50 bits; a code lives 10 minutes and works once
DEFAULT_TTL_S = 600
PAIR_DOMAIN = b"symbiote/pair/v1\x00"


class PairingError(SymbioteError):
    """A pairing code that is unknown, used, expired or malformed."""


@dataclass(frozen=True)
class PairingTicket:
    """What a code entitles its holder to: registering one user key for ``principal``."""

    principal: str
    expires_at: int
    created_at: int

    def as_map(self) -> dict[str, Any]:
        """The ticket as stored (JSON)."""
        return {"principal": self.principal, "expires_at": self.expires_at, "created_at": self.created_at}


def new_code() -> str:
    """A fresh random code, shown as ``XXXXX-XXXXX``."""
    raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    return f"{raw[:5]}-{raw[5:]}"


def normalize_code(code: str) -> str:
    """Upper-case, without separators; the confusable letters O, I and L read as 0, 1 and 1."""
    text = re.sub(r"[\s-]", "", code).upper().translate(str.maketrans("OIL", "011"))
    if len(text) != CODE_LENGTH or any(ch not in CODE_ALPHABET for ch in text):
        raise PairingError("malformed pairing code")
    return text


def proof_message(code: str, kid: str) -> bytes:
    """What a phone signs with its new key to prove it holds it: domain, code and kid."""
    return PAIR_DOMAIN + normalize_code(code).encode() + b"\x00" + kid.encode()


def pairing_url(base_url: str, code: str, fingerprint: str, principal: str | None = None) -> str:
    """The link a phone opens: the page with the code, the certificate fingerprint and (for display
    only; the server decides) the principal, all in the fragment, which never reaches the server."""
    fp = fingerprint.replace(":", "").lower()
    link = f"{base_url.rstrip('/')}/#pair={quote(normalize_code(code))}&fp={fp}"
    return f"{link}&as={quote(principal)}" if principal else link


class PairingStore:
    """Tickets under ``<root>/pairing``, keyed by the SHA-256 of the normalized code."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "pairing"

    def _path(self, code: str, suffix: str = ".json") -> Path:
        digest = hashlib.sha256(normalize_code(code).encode()).hexdigest()
        return self.dir / f"{digest}{suffix}"

    def create(self, principal: str, ttl_s: int = DEFAULT_TTL_S) -> tuple[str, PairingTicket]:
        """Store a new ticket for ``principal``; return the code (shown once) and the ticket."""
        if not principal.startswith("user:") or not valid_name(principal[5:]):
            raise ConfigError("pairing is for user:NAME principals", principal=principal)
        if ttl_s <= 0:
            raise ConfigError("a pairing code needs a positive lifetime", ttl_s=ttl_s)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        now = now_ms()
        ticket = PairingTicket(principal, now + ttl_s * 1000, now)
        code = new_code()
        path = self._path(code)
        write_private(path, json.dumps(ticket.as_map()).encode())
        return code, ticket

    def exists(self, code: str) -> bool:
        """True while the ticket for ``code`` has not been claimed or cancelled."""
        return self._path(code).exists()

    def cancel(self, code: str) -> None:
        """Remove an unused ticket (no error if it is gone)."""
        self._path(code).unlink(missing_ok=True)

    def claim(self, code: str, *, now: int | None = None) -> PairingTicket:
        """Take the ticket for ``code`` out of the store, atomically: only one caller ever gets it.

        Raises :class:`PairingError` if the code is malformed, unknown, already used or expired
        (an expired ticket is removed all the same).
        """
        path = self._path(code)
        claimed = path.with_name(f"{path.name}.claimed-{uuid.uuid4().hex}")
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            raise PairingError("unknown or already used pairing code") from None
        try:
            data = json.loads(claimed.read_text())
        except (OSError, ValueError) as exc:
            raise PairingError("unreadable pairing ticket") from exc
        finally:
            claimed.unlink(missing_ok=True)
        try:
            ticket = PairingTicket(str(data["principal"]), int(data["expires_at"]), int(data.get("created_at", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise PairingError("malformed pairing ticket") from exc
        if ticket.expires_at <= (now_ms() if now is None else now):
            raise PairingError("pairing code expired")
        return ticket

    def write_receipt(self, code: str, receipt: dict[str, Any]) -> None:
        """Leave a note that pairing with ``code`` completed (read by the waiting CLI)."""
        path = self._path(code, ".done.json")
        write_private(path, json.dumps(receipt).encode())

    def take_receipt(self, code: str) -> dict[str, Any] | None:
        """The receipt for ``code`` (removed once read), or None if pairing has not completed."""
        path = self._path(code, ".done.json")
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise PairingError("unreadable pairing receipt", path=str(path)) from exc
        path.unlink(missing_ok=True)
        return data if isinstance(data, dict) else None
