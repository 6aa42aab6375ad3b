"""symbiote: an event-sourced, signature-gated command runtime for a personal AI assistant."""

from symbiote.errors import SymbioteError

__all__ = ["SymbioteError", "__version__"]
__version__ = "0.1.0"
