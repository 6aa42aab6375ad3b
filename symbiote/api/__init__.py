"""The HTTPS API and the phone page: signed writes only, approvals from a paired phone."""

from __future__ import annotations

from typing import TYPE_CHECKING

from symbiote.lazy import lazy_exports

if TYPE_CHECKING:
    from symbiote.api.app import ApiRefusal, ApiServer, create_app
    from symbiote.api.board import ApprovalBoard
    from symbiote.api.models import CommandView, PendingApproval, describe_risk, describe_sandbox
    from symbiote.api.notify import Notifier, SseChannel, TelegramNotifier, format_telegram_message
    from symbiote.api.pairing import PairingError, PairingStore, PairingTicket, pairing_url, proof_message
    from symbiote.api.sessions import Session, SessionError, SessionStore, session_message, session_proof
    from symbiote.api.tls import TlsMaterial, ensure_certificate, fingerprint_of, load_certificate

__all__ = [
    "ApiRefusal",
    "ApiServer",
    "ApprovalBoard",
    "CommandView",
    "Notifier",
    "PairingError",
    "PairingStore",
    "PairingTicket",
    "PendingApproval",
    "Session",
    "SessionError",
    "SessionStore",
    "SseChannel",
    "TelegramNotifier",
    "TlsMaterial",
    "create_app",
    "describe_risk",
    "describe_sandbox",
    "ensure_certificate",
    "fingerprint_of",
    "format_telegram_message",
    "load_certificate",
    "pairing_url",
    "proof_message",
    "session_message",
    "session_proof",
]

# what each name is imported from, on first use: importing one module of the package (the CLI
# takes a few small ones) does not load the rest, the web framework and the LLM client with it
__getattr__ = lazy_exports(
    __name__,
    {
        "ApiRefusal": "symbiote.api.app",
        "ApiServer": "symbiote.api.app",
        "ApprovalBoard": "symbiote.api.board",
        "CommandView": "symbiote.api.models",
        "Notifier": "symbiote.api.notify",
        "PairingError": "symbiote.api.pairing",
        "PairingStore": "symbiote.api.pairing",
        "PairingTicket": "symbiote.api.pairing",
        "PendingApproval": "symbiote.api.models",
        "Session": "symbiote.api.sessions",
        "SessionError": "symbiote.api.sessions",
        "SessionStore": "symbiote.api.sessions",
        "SseChannel": "symbiote.api.notify",
        "TelegramNotifier": "symbiote.api.notify",
        "TlsMaterial": "symbiote.api.tls",
        "create_app": "symbiote.api.app",
        "describe_risk": "symbiote.api.models",
        "describe_sandbox": "symbiote.api.models",
        "ensure_certificate": "symbiote.api.tls",
        "fingerprint_of": "symbiote.api.tls",
        "format_telegram_message": "symbiote.api.notify",
        "load_certificate": "symbiote.api.tls",
        "pairing_url": "symbiote.api.pairing",
        "proof_message": "symbiote.api.pairing",
        "session_message": "symbiote.api.sessions",
        "session_proof": "symbiote.api.sessions",
    },
)
