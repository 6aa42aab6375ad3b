"""Canonical msgpack (DESIGN §3): the only byte form symbiote signs, sends or accepts.

``canon(x)`` packs maps with keys sorted by their UTF-8 bytes at every depth, str as
msgpack str, bytes as bin, ints in their smallest encoding and floats as float64.
Nothing else is allowed: no ext types, no timestamps, no non-str map keys, and maps and arrays
nest at most ``MAX_DEPTH`` levels deep (the envelope itself is the first).
``decode_canonical`` rejects any input that is not exactly ``canon`` of what it
decodes to, so two different byte strings never stand for the same event.
"""

from __future__ import annotations

from typing import Any

import msgpack

from symbiote.errors import DecodeError

__all__ = ["MAX_DEPTH", "canon", "decode_canonical", "normalize"]

MAX_DEPTH = 64
"""How deep maps and arrays may nest; deeper values are refused by both sides (every reader of
the log, and the projections' JSON, then stays far from Python's recursion limit)."""

_PACKER_OPTS: dict[str, Any] = {"use_bin_type": True, "use_single_float": False, "strict_types": True}


_SCALARS = frozenset({str, bytes, float, bool, type(None)})


def normalize(value: Any, depth: int = 1) -> Any:
    """Return ``value`` with every map's keys in canonical order; refuse types canon cannot hold.

    Sorting ``str`` keys by code point is the same order as sorting their UTF-8 bytes (UTF-8
    preserves code point order), so keys are compared as strings.
    """
    kind = type(value)
    if (kind is dict or kind is list or kind is tuple) and depth > MAX_DEPTH:
        raise DecodeError("maps and arrays nest too deep", max_depth=MAX_DEPTH)
    if kind is dict:
        for key in value:
            if type(key) is not str:
                raise DecodeError("map keys must be strings", key_type=type(key).__name__)
        return {key: normalize(value[key], depth + 1) for key in sorted(value)}
    if kind in _SCALARS:
        return value
    if kind is int:
        if not -(2**63) <= value < 2**64:
            raise DecodeError("integer out of msgpack range", value=value)
        return value
    if kind is list or kind is tuple:
        return [normalize(item, depth + 1) for item in value]
    raise DecodeError("type not allowed in canonical msgpack", type=kind.__name__)


def canon(value: Any, *, depth: int = 1) -> bytes:
    """Canonical msgpack bytes of ``value`` (maps sorted by UTF-8 key bytes at every depth);
    ``depth`` is the level ``value`` will sit at (an event's body: 2)."""
    try:
        return msgpack.packb(normalize(value, depth), **_PACKER_OPTS)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise DecodeError("value cannot be packed canonically", error=str(exc)) from exc


def decode_canonical(data: bytes, *, max_size: int | None = None) -> Any:
    """Decode ``data`` and require that it is exactly the canonical encoding of the result.

    Equivalent to ``canon(value) == data`` but about three times cheaper: the value is packed
    again in the order it was decoded in (which catches non-minimal ints, float32, duplicate
    keys and str/bin confusion) and its maps are checked to be in canonical key order.
    Timestamps decode to floats (so they never pack back to the same bytes) and any other
    extension type is refused outright.
    """
    if max_size is not None and len(data) > max_size:
        raise DecodeError("message too large", size=len(data), max_size=max_size)
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            timestamp=1,
            ext_hook=_refuse_ext,
        )
    except msgpack.ExtraData as exc:
        raise DecodeError("trailing bytes after msgpack value") from exc
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise DecodeError("not valid msgpack", error=str(exc)) from exc
    try:
        again = msgpack.packb(value, **_PACKER_OPTS)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DecodeError("value cannot be packed canonically", error=str(exc)) from exc
    if again != data or not _keys_in_order(value):
        raise DecodeError("msgpack is not in canonical form")
    return value


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"extension type {code} is not allowed")


def _keys_in_order(value: Any, depth: int = 1) -> bool:
    """Every map in ``value`` has str keys in strictly ascending (= canonical) order; raise
    :class:`DecodeError` when maps and arrays nest deeper than ``MAX_DEPTH``."""
    if depth > MAX_DEPTH:
        raise DecodeError("maps and arrays nest too deep", max_depth=MAX_DEPTH)
    if type(value) is dict:
        previous: str | None = None
        for key, item in value.items():
            if type(key) is not str or (previous is not None and key <= previous):
                return False
            previous = key
            if (type(item) is dict or type(item) is list) and not _keys_in_order(item, depth + 1):
                return False
        return True
    if type(value) is list:
        for item in value:
            if (type(item) is dict or type(item) is list) and not _keys_in_order(item, depth + 1):
                return False
    return True
