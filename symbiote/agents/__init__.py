"""Agents turn inputs into signed proposals: intent matching, argument extraction, planning."""

from __future__ import annotations

from typing import TYPE_CHECKING

from symbiote.lazy import lazy_exports

if TYPE_CHECKING:
    from symbiote.agents.extract import extract_args
    from symbiote.agents.intent import Candidate, IntentMatcher
    from symbiote.agents.planner import LLMPlan, OpenAIPlanner
    from symbiote.agents.service import AGENT_SUBJECTS, Agent, Plan, Planner

__all__ = [
    "AGENT_SUBJECTS",
    "Agent",
    "Candidate",
    "IntentMatcher",
    "LLMPlan",
    "OpenAIPlanner",
    "Plan",
    "Planner",
    "extract_args",
]

# what each name is imported from, on first use: importing one module of the package (the CLI
# takes a few small ones) does not load the rest, the web framework and the LLM client with it
__getattr__ = lazy_exports(
    __name__,
    {
        "AGENT_SUBJECTS": "symbiote.agents.service",
        "Agent": "symbiote.agents.service",
        "Candidate": "symbiote.agents.intent",
        "IntentMatcher": "symbiote.agents.intent",
        "LLMPlan": "symbiote.agents.planner",
        "OpenAIPlanner": "symbiote.agents.planner",
        "Plan": "symbiote.agents.service",
        "Planner": "symbiote.agents.service",
        "extract_args": "symbiote.agents.extract",
    },
)
