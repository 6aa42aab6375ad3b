"""JSON text for the projection tables (jsonb columns) from decoded event values."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

__all__ = ["json_text", "jsonable", "pg_text"]


def pg_text(value: str) -> str:
    """``value`` without NUL characters (PostgreSQL text and jsonb cannot hold them)."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def jsonable(value: Any) -> Any:
    """A JSON-ready copy: bytes as hex, non-finite floats as null, no NUL characters."""
    if isinstance(value, dict):
        return {pg_text(str(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, str):
        return pg_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"not JSON: {type(value).__name__}")


def json_text(value: Any) -> str:
    """JSON text for a jsonb column, as :func:`jsonable` makes it; the fast path skips the copy when it can."""
    try:
        text = orjson.dumps(value, default=_json_default)
    except TypeError:  # e.g. an integer beyond 64 bits
        text = b""
    if not text or b"\\u0000" in text:
        return json.dumps(jsonable(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.decode()
