"""The permission gate and executor driver: verify, decide, claim once, run, report."""

from symbiote.dispatcher.executors import Executors, Outcome
from symbiote.dispatcher.service import COMMAND_SUBJECTS, Dispatcher

__all__ = ["COMMAND_SUBJECTS", "Dispatcher", "Executors", "Outcome"]
