"""Events over HTTP: wire bytes as base64, or the envelope as JSON with bin values as base64.

Whatever form a client sends, the server turns it into canonical wire bytes and decodes those
with :func:`symbiote.bus.envelope.from_wire`, so HTTP input passes exactly the checks that
input from the bus does.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from symbiote.bus.canonical import canon
from symbiote.bus.envelope import Envelope, from_wire
from symbiote.errors import DecodeError

__all__ = ["b64decode", "b64encode", "envelope_from_json", "event_json", "jsonable"]


def b64encode(data: bytes) -> str:
    """Standard base64 with padding."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Standard or URL-safe base64, padding optional; :class:`DecodeError` if it is not base64."""
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecodeError("not base64") from exc


def jsonable(value: Any) -> Any:
    """A value of an event made JSON-safe: bin becomes ``{"$bin": base64}``."""
    if isinstance(value, bytes):
        return {"$bin": b64encode(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$bin"} and isinstance(value["$bin"], str):
            return b64decode(value["$bin"])
        return {k: _from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_jsonable(v) for v in value]
    return value


def event_json(event: Envelope) -> dict[str, Any]:
    """The envelope as JSON: body bin values as ``{"$bin": base64}``, signatures as base64 strings."""
    return {
        "v": event.v,
        "id": event.id,
        "type": event.type,
        "at": event.at,
        "actor": event.actor,
        "corr": event.corr,
        "cause": event.cause,
        "body": jsonable(event.body),
        "sigs": [{"kid": s.kid, "sig": b64encode(s.sig)} for s in event.sigs],
    }


def envelope_from_json(data: dict[str, Any]) -> Envelope:
    """The inverse of :func:`event_json` (``sig`` as a base64 string or ``{"$bin": …}``), validated
    by way of canonical wire bytes."""
    if not isinstance(data, dict):
        raise DecodeError("event is not a JSON object")
    raw = dict(data)
    sigs = raw.get("sigs")
    if not isinstance(sigs, list):
        raise DecodeError("sigs must be a list")
    converted = []
    for sig in sigs:
        if not isinstance(sig, dict):
            raise DecodeError("each signature must be an object")
        value = sig.get("sig")
        entry = dict(sig)
        entry["sig"] = b64decode(value) if isinstance(value, str) else _from_jsonable(value)
        converted.append(entry)
    raw["sigs"] = converted
    raw["body"] = _from_jsonable(raw.get("body"))
    return from_wire(canon(raw))
