"""The event envelope of DESIGN §3: its fields, signing input, digest and wire bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import msgpack
from pydantic import BaseModel, ConfigDict, Field

from symbiote.bus.canonical import canon, decode_canonical
from symbiote.bus.ids import is_event_id, new_event_id, now_ms
from symbiote.errors import DecodeError

__all__ = [
    "DOMAIN",
    "ENVELOPE_KEYS",
    "MAX_EVENT_BYTES",
    "Envelope",
    "Sig",
    "check_wire",
    "envelope_of",
    "from_accepted_wire",
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
            cached = canon(self.body, depth=2)  # the body sits in the envelope (and the signing input)
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
    return envelope_of(*check_wire(data, max_size=max_size))


def envelope_of(raw: dict[str, Any], signing_input: bytes) -> Envelope:
    """The envelope of what :func:`check_wire` returned. It consumes ``raw``: the map becomes the
    envelope's fields (its signatures become :class:`Sig` models), so never use it afterwards."""
    event = _envelope_of(raw)
    _set_cache(event, signing_input)
    return event


def check_wire(data: bytes, *, max_size: int = MAX_EVENT_BYTES) -> tuple[dict[str, Any], bytes]:
    """Everything :func:`from_wire` checks, without building the envelope: the decoded map and
    its signing input (for bulk checks that need no :class:`Envelope`)."""
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
    problem = _field_problem(raw)
    if problem is not None:
        raise DecodeError("envelope fields invalid", event_id=event_id, error=problem)
    # the decoded maps are already in canonical order (the bytes were canonical): pack directly
    parts = [raw["v"], raw["id"], raw["type"], raw["at"], raw["actor"], raw["corr"], raw["cause"], raw["body"]]
    return raw, DOMAIN + msgpack.packb(parts, use_bin_type=True, use_single_float=False)


def from_accepted_wire(data: bytes) -> Envelope:
    """The envelope of bytes that :func:`from_wire` already accepted (e.g. in another process).

    Only unpacks: no canonical-form or field checks, so never call it on bytes that did not
    pass :func:`from_wire`.
    """
    return _envelope_of(msgpack.unpackb(data, raw=False, strict_map_key=True, timestamp=1))


def _envelope_of(raw: dict[str, Any]) -> Envelope:
    """The envelope of a decoded map that :func:`_field_problem` accepted (the map becomes its
    fields: its signatures are replaced by :class:`Sig` models)."""
    raw["sigs"] = tuple([_trusted(Sig, sig) for sig in raw["sigs"]])  # each exactly {kid, sig}
    return _trusted(Envelope, raw)


def _field_problem(raw: dict[str, Any]) -> str | None:
    """What :class:`Envelope` (strict) would refuse in a decoded map; None if it fits.

    The checks of the model, written out: validating through pydantic costs several times more
    than the rest of decoding. ``v`` must be the integer 1 (not ``true`` nor ``1.0``).
    """
    v, type_, at, actor, body, sigs = raw["v"], raw["type"], raw["at"], raw["actor"], raw["body"], raw["sigs"]
    if type(v) is not int or v != 1:
        return "v: must be the integer 1"
    if type(type_) is not str or not 1 <= len(type_) <= 64:
        return "type: a string of 1 to 64 characters"
    if type(at) is not int or at < 0:
        return "at: a non-negative integer"
    if not 3 <= len(actor) <= 128:
        return "actor: 3 to 128 characters"
    if type(body) is not dict:
        return "body: must be a map"
    if type(sigs) is not list:
        return "sigs: must be an array"
    for index, sig in enumerate(sigs):
        if type(sig) is not dict or sig.keys() != _SIG_KEYS:
            return f"sigs.{index}: a map of exactly kid and sig"
        if type(sig["kid"]) is not str:
            return f"sigs.{index}.kid: must be a string"
        if type(sig["sig"]) is not bytes or len(sig["sig"]) != 64:
            return f"sigs.{index}.sig: must be 64 bytes"
    if len(sigs) > 1 and len({sig["kid"] for sig in sigs}) != len(sigs):
        return "sigs: a key signs an event at most once"  # else one event could travel as other bytes
    return None


_SIG_KEYS = frozenset({"kid", "sig"})
M = TypeVar("M", bound=BaseModel)
_FIELD_NAMES: dict[type[BaseModel], frozenset[str]] = {}


def _trusted(cls: type[M], values: dict[str, Any]) -> M:
    """An instance of ``cls`` from values already checked against it (what ``model_construct`` does, cheaper)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = frozenset(cls.model_fields)
    instance = cls.__new__(cls)
    object.__setattr__(instance, "__dict__", values)
    object.__setattr__(instance, "__pydantic_fields_set__", set(names))
    object.__setattr__(instance, "__pydantic_extra__", None)
    object.__setattr__(instance, "__pydantic_private__", None)
    return instance


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
