"""Ed25519 keys, event signing and verification, and the key registry."""

from symbiote.signers.keyring import KeyEntry, Keyring, SigCheck, Verdict
from symbiote.signers.keys import KID_PREFIX, SigningKey, kid_of, public_key_from_kid, sign_event, verify_sig

__all__ = [
    "KID_PREFIX",
    "KeyEntry",
    "Keyring",
    "SigCheck",
    "SigningKey",
    "Verdict",
    "kid_of",
    "public_key_from_kid",
    "sign_event",
    "verify_sig",
]
