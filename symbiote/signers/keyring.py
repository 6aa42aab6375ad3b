"""The key registry: who holds which key, with which role, from and until which log position.

Folded from ``key.registered`` / ``key.revoked`` events (each with its stream sequence).
A signature counts only if its key was registered, and not revoked, *before* the signed
event's position in the log (DESIGN §3). The first owner key registers itself at the
head of the log; every later key event needs a signature by an owner key valid at its
position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from symbiote.bus.envelope import Envelope
from symbiote.bus.events import KeyRegistered, KeyRevoked, parse_body
from symbiote.errors import DecodeError, SignatureError
from symbiote.signers.keys import public_key_from_kid, verify_sig

__all__ = ["KeyEntry", "Keyring", "SigCheck", "Verdict"]

Reason = Literal["bad_signature", "unknown_key", "revoked_key", "wrong_role", "malformed"]


@dataclass
class KeyEntry:
    """One registered key and the log positions that bound its validity."""

    kid: str
    principal: str
    role: str
    registered_seq: int
    revoked_seq: int | None = None

    def valid_at(self, seq: int) -> bool:
        return self.registered_seq < seq and (self.revoked_seq is None or self.revoked_seq >= seq)


@dataclass(frozen=True)
class SigCheck:
    """The result of checking one signature of an event."""

    kid: str
    ok: bool
    principal: str | None
    role: str | None
    reason: Reason | None


@dataclass(frozen=True)
class Verdict:
    """All signatures of an event checked at a log position; ``reason`` is the first failure."""

    checks: tuple[SigCheck, ...]
    reason: Reason | None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def principals(self) -> list[str]:
        return [c.principal for c in self.checks if c.ok and c.principal]


@dataclass
class Keyring:
    """Key registry state; ``apply`` folds one key event, ``verify`` checks an event's signatures."""

    keys: dict[str, KeyEntry] = field(default_factory=dict)
    has_owner: bool = False

    def entry(self, kid: str) -> KeyEntry | None:
        return self.keys.get(kid)

    def by_principal(self, principal: str) -> list[KeyEntry]:
        return [k for k in self.keys.values() if k.principal == principal]

    def verify(
        self,
        event: Envelope,
        seq: int,
        *,
        signing_input: bytes | None = None,
        crypto_ok: Sequence[bool] | None = None,
    ) -> Verdict:
        """Check every signature on ``event`` as of stream position ``seq``.

        An event needs at least one signature, every signature must verify with a key valid
        at ``seq``, and one of the signers must be the event's ``actor``. ``crypto_ok`` gives
        the cryptographic result of each signature when it was already computed (a replay checks
        signatures in bulk, in other processes); the registry rules are applied here either way.
        """
        if not event.sigs:
            return Verdict((), "bad_signature", "event carries no signature")
        if crypto_ok is not None and len(crypto_ok) != len(event.sigs):
            crypto_ok = None
        message = b"" if crypto_ok is not None else (signing_input or event.signing_input())
        checks: list[SigCheck] = []
        first: tuple[Reason, str] | None = None
        for index, sig in enumerate(event.sigs):
            entry = self.keys.get(sig.kid)
            reason: Reason | None = None
            if entry is None or entry.registered_seq >= seq:
                reason, detail = "unknown_key", f"key {sig.kid} is not registered before seq {seq}"
            elif not entry.valid_at(seq):
                reason, detail = "revoked_key", f"key {sig.kid} of {entry.principal} was revoked"
            elif not (crypto_ok[index] if crypto_ok is not None else verify_sig(sig.kid, sig.sig, message)):
                reason, detail = "bad_signature", f"signature by {sig.kid} does not verify"
            checks.append(
                SigCheck(
                    sig.kid, reason is None, entry.principal if entry else None, entry.role if entry else None, reason
                )
            )
            if reason is not None and first is None:
                first = (reason, detail)
        if first is not None:
            return Verdict(tuple(checks), first[0], first[1])
        if event.actor not in {c.principal for c in checks}:
            roles = sorted({c.role or "?" for c in checks})
            return Verdict(tuple(checks), "wrong_role", f"{event.actor} is not among the signers (roles {roles})")
        return Verdict(tuple(checks), None)

    def apply(self, event: Envelope, seq: int) -> Verdict:
        """Fold a ``key.registered`` / ``key.revoked`` event found at ``seq``; invalid ones change nothing."""
        try:
            body = parse_body(event)
        except DecodeError as exc:
            return Verdict((), "malformed", exc.message)
        if isinstance(body, KeyRegistered) and not self.has_owner:
            return self._genesis(event, body, seq)
        verdict = self.verify(event, seq)
        if not verdict.ok:
            return verdict
        if "owner" not in {c.role for c in verdict.checks}:
            return Verdict(verdict.checks, "wrong_role", "key events must be signed by an owner key")
        if isinstance(body, KeyRegistered):
            if body.principal.split(":", 1)[0] != body.role:
                return Verdict(verdict.checks, "malformed", "principal must be ROLE:NAME of its role")
            if body.kid in self.keys:
                return Verdict(verdict.checks, "malformed", "key already registered")
            try:
                public_key_from_kid(body.kid)
            except SignatureError as exc:
                return Verdict(verdict.checks, "malformed", f"not a valid kid: {exc}")
            self.keys[body.kid] = KeyEntry(body.kid, body.principal, body.role, seq)
        elif isinstance(body, KeyRevoked):
            entry = self.keys.get(body.kid)
            if entry is None or entry.revoked_seq is not None:
                return Verdict(verdict.checks, "malformed", "no such active key to revoke")
            entry.revoked_seq = seq
        else:
            return Verdict(verdict.checks, "malformed", f"{event.type} is not a key event")
        return verdict

    def _genesis(self, event: Envelope, body: KeyRegistered, seq: int) -> Verdict:
        """The first owner key: registered by an event it signs itself."""
        if body.role != "owner" or event.actor != body.principal:
            return Verdict((), "unknown_key", "the first key of the log must be a self-registered owner key")
        if len(event.sigs) != 1 or event.sigs[0].kid != body.kid:
            return Verdict((), "bad_signature", "the genesis owner key must sign its own registration")
        if not verify_sig(body.kid, event.sigs[0].sig, event.signing_input()):
            return Verdict((), "bad_signature", "genesis signature does not verify")
        entry = KeyEntry(body.kid, body.principal, "owner", seq)
        self.keys[body.kid] = entry
        self.has_owner = True
        check = SigCheck(body.kid, True, body.principal, "owner", None)
        return Verdict((check,), None)
