"""Validation errors in words for people."""

from __future__ import annotations

from pydantic import ValidationError

__all__ = ["validation_words"]


def validation_words(exc: ValidationError, whole: str = "the file") -> str:
    """A pydantic error for people: ``field: what is wrong`` for each, without pydantic's links
    (``whole`` names what an error about no field in particular is about)."""
    parts = []
    for error in exc.errors(include_url=False)[:10]:
        where = ".".join(str(part) for part in error["loc"]) or f"({whole})"
        parts.append(f"{where}: {'missing' if error['type'] == 'missing' else error['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
