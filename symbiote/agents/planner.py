"""An LLM planner through an OpenAI-compatible chat API (vLLM's server, or any compatible one).

The planner is asked for one JSON object: the registered command that fits, its args, and its
confidence. What it answers is only a proposal: the agent still checks that the command exists
and that the confidence reaches the command's ``auto_confidence``, and the dispatcher alone
decides what may run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import structlog
from openai import AsyncOpenAI, OpenAIError

from symbiote.registry.definition import CommandDefinition

__all__ = ["LLMPlan", "OpenAIPlanner"]

log = structlog.get_logger("symbiote.planner")

SYSTEM = (
    "You turn a person's request into exactly one JSON object and nothing else: "
    '{"command": <name of one registered command, or null if none fits>, "args": {...}, '
    '"confidence": <0..1, how sure you are that this is what the person wants>}. '
    "Args must follow the command's JSON Schema. Never invent commands."
)


@dataclass(frozen=True)
class LLMPlan:
    """What the model proposed."""

    command: str | None
    args: dict[str, Any] = field(default_factory=dict)
    confidence: float = 0.0


class OpenAIPlanner:
    """Plans with a chat model served over the OpenAI API (``base_url`` like ``http://host:8000/v1``)."""

    def __init__(self, base_url: str, model: str, *, api_key: str = "not-needed", timeout_s: float = 30.0) -> None:
        self.client = AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=1)
        self.model = model

    async def plan(self, text: str, commands: list[CommandDefinition], context: list[str]) -> LLMPlan | None:
        """Ask the model; None when it cannot be reached or answers something unusable."""
        catalogue = [
            {"name": d.name, "description": d.description, "args_schema": d.args_schema, "examples": d.examples}
            for d in commands
        ]
        prompt = json.dumps({"request": text, "commands": catalogue, "recent_memory": context[:5]})
        try:
            reply = await self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
                temperature=0.0,
                max_tokens=512,
            )
        except OpenAIError as exc:
            log.warning("planner.unavailable", error=str(exc)[:300])
            return None
        content = (reply.choices[0].message.content or "") if reply.choices else ""
        return _parse(content)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse(content: str) -> LLMPlan | None:
    start, end = content.find("{"), content.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        data = json.loads(content[start : end + 1], parse_constant=_refuse_constant)
    except ValueError:  # not JSON, or Infinity / NaN, which no schema can check
        return None
    if not isinstance(data, dict):
        return None
    command = data.get("command")
    args = data.get("args") or {}
    confidence = data.get("confidence", 0.0)
    if command is not None and not isinstance(command, str):
        return None
    if not isinstance(args, dict) or not isinstance(confidence, (int, float)):
        return None
    return LLMPlan(command, args, min(max(float(confidence), 0.0), 1.0))
