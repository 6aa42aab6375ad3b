"""Validation errors in words for people."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

__all__ = ["error_words", "validation_words"]


def validation_words(exc: ValidationError, whole: str = "the file") -> str:
    """A pydantic error for people: ``field: what is wrong`` for each, without pydantic's links
    (``whole`` names what an error about no field in particular is about)."""
    return error_words(exc.errors(include_url=False), whole, total=exc.error_count())


def error_words(
    errors: Sequence[Mapping[str, Any]], whole: str, *, total: int | None = None, skip: Collection[str] = ()
) -> str:
    """Validation errors as pydantic and FastAPI list them, in words: ``field: what is wrong``
    for the first ten, then how many more; ``skip`` leaves out location parts that say nothing
    (FastAPI's ``body``)."""
    parts = []
    for error in errors[:10]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in skip) or f"({whole})"
        parts.append(f"{where}: {'missing' if error.get('type') == 'missing' else error.get('msg')}")
    more = (len(errors) if total is None else total) - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
