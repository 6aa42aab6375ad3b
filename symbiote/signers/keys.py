"""Ed25519 keys: kids, key files (PKCS#8 PEM, mode 0600, encrypted when a passphrase is set), signing."""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from symbiote.bus.envelope import Envelope
from symbiote.errors import KeyFileError, SignatureError
from symbiote.files import write_private

__all__ = [
    "KID_PREFIX",
    "SigningKey",
    "b64url",
    "kid_in_file",
    "kid_of",
    "public_key_from_kid",
    "sign_event",
    "signature_backend",
    "valid_name",
    "verify_sig",
]

KID_PREFIX = "ed25519:"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")


def valid_name(name: str) -> bool:
    """True if ``name`` may follow ``user:`` or ``owner:`` (lower-case letters, digits, ``_ . -``;
    at most 63 characters; nothing else, not even a trailing newline)."""
    return _NAME.fullmatch(name) is not None


def b64url(raw: bytes) -> str:
    """Unpadded base64url (as kids spell keys); decoding it back and comparing is how a spelling
    is checked to be the one canonical one."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def kid_of(public_key: Ed25519PublicKey) -> str:
    """``"ed25519:" + base64url(raw 32-byte public key)``, unpadded."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KID_PREFIX + b64url(raw)


_PUBLIC_CACHE: dict[str, Ed25519PublicKey] = {}


def public_key_from_kid(kid: str) -> Ed25519PublicKey:
    """The public key a kid names; raise :class:`SignatureError` if it is not a valid Ed25519 kid."""
    cached = _PUBLIC_CACHE.get(kid)
    if cached is not None:
        return cached
    if not kid.startswith(KID_PREFIX):
        raise SignatureError("kid is not ed25519", kid=kid)
    text = kid[len(KID_PREFIX) :]
    if len(text) != 43 or "=" in text:
        raise SignatureError("kid is not 32 bytes of unpadded base64url", kid=kid)
    try:
        raw = base64.urlsafe_b64decode(text + "=")
        key = Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise SignatureError("kid does not hold a public key", kid=kid) from exc
    if b64url(raw) != text:
        raise SignatureError("kid is not canonical base64url", kid=kid)
    if len(_PUBLIC_CACHE) < 10_000:
        _PUBLIC_CACHE[kid] = key
    return key


@functools.cache
def _sodium_verify() -> Any | None:
    """libsodium's detached Ed25519 verify, when the system has libsodium (about twice as fast)."""
    name = ctypes.util.find_library("sodium")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        if lib.sodium_init() < 0:
            return None
        verify = lib.crypto_sign_ed25519_verify_detached
    except (OSError, AttributeError):
        return None
    verify.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulonglong, ctypes.c_char_p]
    verify.restype = ctypes.c_int
    return verify


def signature_backend() -> str:
    """Which library checks signatures first: ``libsodium`` or ``cryptography``."""
    return "libsodium" if _sodium_verify() is not None else "cryptography"


_RAW_PUBLIC: dict[str, bytes] = {}


def verify_sig(kid: str, sig: bytes, message: bytes) -> bool:
    """True if ``sig`` is a valid Ed25519 signature of ``message`` by the key ``kid`` names.

    libsodium, where present, answers first; it is stricter than OpenSSL (it refuses some
    non-canonical encodings), so a signature it refuses is asked of ``cryptography`` too and
    the accepted set is exactly ``cryptography``'s.
    """
    try:
        public_key = public_key_from_kid(kid)
    except SignatureError:
        return False
    sodium = _sodium_verify()
    if sodium is not None and len(sig) == 64:
        raw = _RAW_PUBLIC.get(kid)
        if raw is None:
            raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            if len(_RAW_PUBLIC) < 10_000:
                _RAW_PUBLIC[kid] = raw
        if sodium(sig, message, len(message), raw) == 0:
            return True
    try:
        public_key.verify(sig, message)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class SigningKey:
    """A private Ed25519 key with the principal it signs for (``role:name``)."""

    private: Ed25519PrivateKey
    principal: str

    @classmethod
    def generate(cls, principal: str) -> SigningKey:
        return cls(Ed25519PrivateKey.generate(), principal)

    @classmethod
    def from_seed(cls, seed: bytes, principal: str) -> SigningKey:
        """Deterministic key from a 32-byte seed (test vectors)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed), principal)

    @functools.cached_property
    def kid(self) -> str:
        return kid_of(self.private.public_key())

    @property
    def role(self) -> str:
        return self.principal.split(":", 1)[0]

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

    def save(self, path: Path, passphrase: bytes | None = None) -> None:
        """Write PKCS#8 PEM (encrypted with ``passphrase`` when given), mode 0600, atomically; the
        principal and the public kid go in clear in two comment lines before it."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
        )
        pem = self.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, f"# principal: {self.principal}\n# kid: {self.kid}\n".encode() + pem)

    @classmethod
    def load(cls, path: Path, passphrase: bytes | None = None) -> SigningKey:
        """Read a key file written by :meth:`save` (or any PKCS#8 Ed25519 PEM with a principal line)."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyFileError("cannot read key file", path=str(path), error=str(exc)) from exc
        principal = _comment(data.partition(b"\n")[0], "principal") or ""
        try:
            key = serialization.load_pem_private_key(data, password=passphrase or None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(
                "cannot decode key file (wrong or missing passphrase?)", path=str(path), error=str(exc)
            ) from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError("key file is not an Ed25519 key", path=str(path))
        return cls(key, principal)


def kid_in_file(path: Path) -> str | None:
    """The public kid a key file written by :meth:`SigningKey.save` names in clear (no passphrase
    needed); None when it names none (files written before it did) or cannot be read."""
    try:
        with path.open("rb") as file:
            head = [file.readline() for _ in range(2)]
    except OSError:
        return None
    return next((kid for line in head if (kid := _comment(line, "kid"))), None)


def _comment(line: bytes, name: str) -> str | None:
    """The value of a ``# <name>: <value>`` line that :meth:`SigningKey.save` writes; None if ``line`` is none."""
    prefix = f"# {name}: ".encode()
    return line[len(prefix) :].decode(errors="replace").strip() if line.startswith(prefix) else None


def sign_event(event: Envelope, key: SigningKey) -> Envelope:
    """``event`` with ``key``'s signature over its signing input appended."""
    return event.with_sig(key.kid, key.sign(event.signing_input()))
