"""The event envelope of DESIGN §3: its fields, signing input, digest and wire bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Literal

import msgpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from symbiote.bus.canonical import canon, decode_canonical
from symbiote.bus.ids import is_event_id, new_event_id, now_ms
from symbiote.errors import DecodeError

__all__ = [
    "DOMAIN",
    "ENVELOPE_KEYS",
    "MAX_EVENT_BYTES",
    "Envelope",
    "Sig",
    "from_wire",
    "make_event",
    "peek_id",
]

DOMAIN = b"symbiote/v1\x00"
ENVELOPE_KEYS = frozenset({"v", "id", "type", "at", "actor", "corr", "cause", "body", "sigs"})
MAX_EVENT_BYTES = 256 * 1024
_ACTOR_ROLES = ("agent", "user", "runtime", "owner")


class Sig(BaseModel):
    """One signature: the signer's ``kid`` and 64 raw Ed25519 bytes."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")
    kid: str
    sig: bytes = Field(min_length=64, max_length=64)


class Envelope(BaseModel):
    """One event. Immutable; signatures are added with :meth:`with_sig`."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")
    v: Literal[1] = 1
    id: str
    type: str = Field(min_length=1, max_length=64)
    at: int = Field(ge=0)
    actor: str = Field(min_length=3, max_length=128)
    corr: str | None = None
    cause: str | None = None
    body: dict[str, Any]
    sigs: tuple[Sig, ...] = Field(default=(), strict=False)

    def signing_input(self) -> bytes:
        """``b"symbiote/v1\\x00" + canon([v, id, type, at, actor, corr, cause, body])`` (computed once)."""
        cached: bytes | None = self.__dict__.get(_CACHE)
        if cached is None:
            # a fixarray of 8 is its header byte followed by the 8 encoded elements
            head = b"".join(_pack(x) for x in (self.v, self.id, self.type, self.at, self.actor, self.corr, self.cause))
            cached = DOMAIN + b"\x98" + head + self.body_bytes()
            _set_cache(self, cached)
        return cached

    def body_bytes(self) -> bytes:
        """``canon(body)``, computed once."""
        cached: bytes | None = self.__dict__.get(_BODY_CACHE)
        if cached is None:
            cached = canon(self.body)
            object.__setattr__(self, _BODY_CACHE, cached)
        return cached

    def digest(self) -> bytes:
        """SHA-256 of the signing input: what an approval signs over."""
        return hashlib.sha256(self.signing_input()).digest()

    def to_wire(self) -> bytes:
        """Canonical msgpack of the whole envelope, as published (keys in their canonical order)."""
        sigs = _pack([{"kid": s.kid, "sig": s.sig} for s in self.sigs])
        return b"".join(
            (
                b"\x89",
                _K_ACTOR,
                _pack(self.actor),
                _K_AT,
                _pack(self.at),
                _K_BODY,
                self.body_bytes(),
                _K_CAUSE,
                _pack(self.cause),
                _K_CORR,
                _pack(self.corr),
                _K_ID,
                _pack(self.id),
                _K_SIGS,
                sigs,
                _K_TYPE,
                _pack(self.type),
                _K_V,
                _pack(self.v),
            )
        )

    def as_map(self) -> dict[str, Any]:
        """The envelope as the plain map that goes on the wire."""
        return {
            "v": self.v,
            "id": self.id,
            "type": self.type,
            "at": self.at,
            "actor": self.actor,
            "corr": self.corr,
            "cause": self.cause,
            "body": self.body,
            "sigs": [{"kid": s.kid, "sig": s.sig} for s in self.sigs],
        }

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Envelope:
        """A copy; the cached signing input is dropped, since ``update`` may change signed fields."""
        copy = super().model_copy(update=update, deep=deep)
        _set_cache(copy, None)
        object.__setattr__(copy, _BODY_CACHE, None)
        return copy

    def with_sig(self, kid: str, sig: bytes) -> Envelope:
        """A copy with one more signature appended (the signing input does not change)."""
        copy = self.model_copy(update={"sigs": (*self.sigs, Sig(kid=kid, sig=sig))})
        _set_cache(copy, self.__dict__.get(_CACHE))
        object.__setattr__(copy, _BODY_CACHE, self.__dict__.get(_BODY_CACHE))
        return copy

    @property
    def actor_role(self) -> str:
        """The role part of ``actor`` (``agent`` in ``agent:main``)."""
        return self.actor.split(":", 1)[0]


def make_event(
    type_: str,
    actor: str,
    body: dict[str, Any],
    *,
    corr: str | None = None,
    cause: str | None = None,
    event_id: str | None = None,
    at: int | None = None,
) -> Envelope:
    """A new unsigned envelope with a fresh UUIDv7 id and the current time."""
    return Envelope(
        id=event_id or new_event_id(),
        type=type_,
        at=now_ms() if at is None else at,
        actor=actor,
        corr=corr,
        cause=cause,
        body=body,
    )


def from_wire(data: bytes, *, max_size: int = MAX_EVENT_BYTES) -> Envelope:
    """Decode and validate wire bytes; raise :class:`DecodeError` (with ``event_id`` when readable)."""
    raw = decode_canonical(data, max_size=max_size)
    if not isinstance(raw, dict):
        raise DecodeError("envelope is not a map")
    event_id = raw.get("id") if is_event_id(raw.get("id")) else None
    keys = set(raw)
    if keys != ENVELOPE_KEYS:
        raise DecodeError(
            "envelope keys differ from the contract",
            event_id=event_id,
            missing=sorted(ENVELOPE_KEYS - keys),
            extra=sorted(keys - ENVELOPE_KEYS),
        )
    if event_id is None:
        raise DecodeError("event id is not a UUID string")
    actor = raw.get("actor")
    if not isinstance(actor, str) or actor.split(":", 1)[0] not in _ACTOR_ROLES or ":" not in actor:
        raise DecodeError("actor is not ROLE:NAME", event_id=event_id)
    for ref in ("corr", "cause"):
        if raw[ref] is not None and not is_event_id(raw[ref]):
            raise DecodeError(f"{ref} is not an event id", event_id=event_id)
    try:
        event = Envelope.model_validate(raw)
    except ValidationError as exc:
        raise DecodeError("envelope fields invalid", event_id=event_id, error=_short(exc)) from exc
    # the decoded maps are already in canonical order (the bytes were canonical): pack directly
    parts = [raw["v"], raw["id"], raw["type"], raw["at"], raw["actor"], raw["corr"], raw["cause"], raw["body"]]
    _set_cache(event, DOMAIN + msgpack.packb(parts, use_bin_type=True, use_single_float=False))
    return event


def peek_id(data: bytes) -> str | None:
    """Best-effort event id of undecodable bytes (for denial events); None if unreadable."""
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=False, timestamp=0)
    except (ValueError, TypeError, msgpack.UnpackException):  # garbage: no readable id; callers count it
        return None
    if isinstance(raw, dict) and is_event_id(raw.get("id")):
        return str(raw["id"])
    return None


_CACHE = "_signing_input"
_BODY_CACHE = "_body_bytes"


def _pack(value: Any) -> bytes:
    """msgpack of a value that needs no key sorting (scalars, and maps built in canonical order)."""
    return msgpack.packb(value, use_bin_type=True, use_single_float=False)  # type: ignore[no-any-return]


_K_ACTOR, _K_AT, _K_BODY, _K_CAUSE, _K_CORR, _K_ID, _K_SIGS, _K_TYPE, _K_V = (
    _pack(k) for k in ("actor", "at", "body", "cause", "corr", "id", "sigs", "type", "v")
)


def _set_cache(event: Envelope, signing_input: bytes | None) -> None:
    """Remember an envelope's signing input (kept outside the model's fields: not compared, not dumped)."""
    object.__setattr__(event, _CACHE, signing_input)


def _short(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
