"""Argument extraction: turn the words of a request into the args a command's schema asks for.

Rules here are deliberately simple and predictable; when they cannot fill a required field
the agent asks (``command.clarify``) instead of guessing. An LLM planner, when configured,
can do better extraction for commands these rules do not know.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from symbiote.registry.definition import CommandDefinition

__all__ = ["extract_args", "starts_with_trigger", "strip_trigger"]

_TRIGGERS = {
    "echo": r"^(?:please\s+)?(?:echo|say back|say|repeat after me|repeat)\b[:,]?\s*",
    "note.write": r"^(?:please\s+)?(?:take a note|write a note|make a note|note down|jot down|write down|note)"
    r"(?:\s+(?:that|saying|about))?\b[:,]?\s*",
    "shell.run": r"^(?:please\s+)?(?:run|execute|exec)(?:\s+(?:the\s+)?(?:shell\s+)?(?:command|program))?\b[:,]?\s*",
    "memory.search": r"^(?:please\s+)?(?:"
    r"search\s+(?:in\s+)?(?:my\s+|the\s+|your\s+)?memory\s+(?:for|about)"
    r"|look\s+up\s+(?:in\s+)?(?:my\s+|your\s+)?memory(?:\s+for)?"
    r"|what\s+did\s+i\s+(?:ask|tell|say\s+to)\s+you(?:\s+(?:yesterday|today|earlier|before|last\s+\w+))?\s+about"
    r"|do\s+you\s+remember|remember\s+when|recall"
    r")\b[:,]?\s*",
}


def _slug(text: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", text.lower())[:6]
    return ("-".join(words) or "note")[:48] + ".txt"


def starts_with_trigger(command: str, text: str) -> bool:
    """True if ``text`` opens with one of the command's trigger words ("run …", "echo …")."""
    pattern = _TRIGGERS.get(command)
    return bool(pattern and re.match(pattern, text.strip(), flags=re.IGNORECASE))


def strip_trigger(command: str, text: str) -> str:
    """``text`` without the command's trigger words at its start ("run ls" → "ls")."""
    pattern = _TRIGGERS.get(command)
    stripped = text.strip()
    if pattern:
        stripped = re.sub(pattern, "", stripped, count=1, flags=re.IGNORECASE)
    return stripped.strip()


def extract_args(definition: CommandDefinition, text: str) -> dict[str, Any] | None:
    """Args for ``definition`` from ``text``, or None if a required field cannot be filled."""
    rest = strip_trigger(definition.name, text)
    properties: dict[str, Any] = definition.args_schema.get("properties", {})
    required: list[str] = list(definition.args_schema.get("required", []))
    if definition.name == "note.write":
        if not rest:
            return None
        # "… called groceries: milk and eggs": the name, then what the note says
        named = re.match(
            r"^(?:called|named|titled)\s+(.+?)(?:\s*[:–—]|\s+(?:saying|that says))\s*(.+)$",
            rest,
            flags=re.IGNORECASE | re.DOTALL,
        )
        if named:
            return {"name": _slug(named[1]), "text": named[2].strip() + "\n"}
        return {"name": _slug(rest), "text": rest + "\n"}
    args: dict[str, Any] = {}
    for name in required:
        spec = properties.get(name, {})
        kind = spec.get("type")
        if kind == "string":
            if not rest:
                return None
            args[name] = rest
        elif kind == "array":
            try:
                parts = shlex.split(rest)
            except ValueError:
                return None
            if not parts:
                return None
            args[name] = parts
        else:
            return None
    if not required and len(properties) == 1 and rest:
        (name,) = properties
        if properties[name].get("type") == "string":
            args[name] = rest
    return args
