"""Agents turn inputs into signed proposals: intent matching, argument extraction, planning."""

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
