"""The HTTPS API and the phone page: signed writes only, approvals from a paired phone."""

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
