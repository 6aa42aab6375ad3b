"""Event ids: UUIDv7 text (RFC 9562), time-ordered so ids sort roughly by creation."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid

__all__ = ["derived_event_id", "event_id_ms", "is_event_id", "new_event_id", "now_ms"]

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def now_ms() -> int:
    """Current Unix time in milliseconds."""
    return time.time_ns() // 1_000_000


def new_event_id() -> str:
    """A new UUIDv7 string; monotonic within this process (a 12-bit counter breaks ties)."""
    global _last_ms, _counter
    with _lock:
        ms = now_ms()
        if ms <= _last_ms:
            _counter += 1
            if _counter > 0xFFF:
                _last_ms += 1
                _counter = 0
            ms = _last_ms
        else:
            _last_ms = ms
            _counter = 0
        counter = _counter
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand
    return str(uuid.UUID(int=value))


def is_event_id(value: object) -> bool:
    """True if ``value`` is a lower-case hyphenated UUID string (safe to put in a subject)."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def event_id_ms(event_id: str) -> int:
    """The Unix milliseconds a UUIDv7 event id carries (when it was made, by its maker's clock)."""
    return uuid.UUID(event_id).int >> 80


def derived_event_id(parent_id: str, purpose: str) -> str:
    """A UUIDv7-shaped id fixed by ``(parent_id, purpose)``: the same input always yields the same
    derived event id, so a component that re-processes an input after a crash publishes an event
    that JetStream de-duplicates (and the dispatcher refuses as a replay) instead of a second one."""
    import hashlib

    ms = event_id_ms(parent_id)
    digest = int.from_bytes(hashlib.sha256(f"{parent_id}/{purpose}".encode()).digest()[:10], "big")
    value = ms << 80 | 0x7 << 76 | (digest >> 68) << 64 | 0b10 << 62 | (digest & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))
