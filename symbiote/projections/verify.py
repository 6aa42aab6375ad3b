"""Decoding and verifying stored messages in bulk, for the projector, replay and the audit.

Checking a signature has two parts: the cryptography (does this Ed25519 signature by this
kid verify over this signing input?) and the registry (was that kid registered, and not
revoked, before this position, and is the actor among the signers?). The first part does
not depend on the position, so it is done for a whole batch at once in worker threads;
the second is done in log order by :func:`verdict_at`, which applies exactly the rules of
:meth:`symbiote.signers.keyring.Keyring.verify` to the precomputed results.

The cryptography uses libsodium through ``ctypes`` when the system has it (about twice as
fast as OpenSSL here) and ``cryptography`` otherwise. libsodium is the stricter of the two
(it also refuses small-order keys and points), so a signature it accepts OpenSSL accepts
too; whenever libsodium refuses one, the answer is taken from
:func:`symbiote.signers.keys.verify_sig`, so results always equal ``verify_sig``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import multiprocessing
import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import structlog

from symbiote.bus.envelope import Envelope, from_wire, peek_id
from symbiote.bus.stream import Bus, StoredMsg
from symbiote.errors import DecodeError
from symbiote.signers.keyring import Keyring, Verdict
from symbiote.signers.keys import signature_backend, verify_sig

__all__ = [
    "CHECKPOINT_SUBJECT",
    "CachedKeyring",
    "Decoded",
    "SignatureChecker",
    "decode",
    "entry_hash",
    "reading",
    "verdict_at",
]

CHECKPOINT_SUBJECT = "sym.audit.checkpoint"
log = structlog.get_logger("symbiote.projections")


@contextlib.asynccontextmanager
async def reading(
    bus: Bus, subject: str = "sym.>", *, from_seq: int = 1, follow: bool = False, batch: int = 1024
) -> AsyncIterator[AsyncIterator[StoredMsg]]:
    """``async with reading(bus, ...) as messages``: :meth:`Bus.read`, closed (consumer removed) on leaving."""
    messages = bus.read(subject, from_seq=from_seq, follow=follow, batch=batch)
    try:
        yield messages
    finally:
        close = getattr(messages, "aclose", None)
        if close is not None:
            await close()


def entry_hash(seq: int, subject: str, data: bytes) -> bytes:
    """``SHA-256(u64be(seq) ‖ SHA-256(subject) ‖ SHA-256(data))``: one message's checkpoint entry."""
    return hashlib.sha256(
        seq.to_bytes(8, "big") + hashlib.sha256(subject.encode()).digest() + hashlib.sha256(data).digest()
    ).digest()


@dataclass(slots=True)
class Decoded:
    """One stored message, decoded (``event``) or not (``error``), with its signatures' crypto results."""

    seq: int
    subject: str
    data: bytes
    event: Envelope | None
    error: str | None
    signing_input: bytes = b""
    sig_ok: list[bool] = field(default_factory=list)

    @property
    def raw_sha256(self) -> bytes:
        return hashlib.sha256(self.data).digest()

    @property
    def peeked_id(self) -> str | None:
        return self.event.id if self.event is not None else peek_id(self.data)


def decode(msg: StoredMsg) -> Decoded:
    """Decode one message with :func:`~symbiote.bus.envelope.from_wire` (no signature check yet)."""
    try:
        event = from_wire(msg.data)
    except DecodeError as exc:
        detail = exc.fields.get("error") or exc.fields.get("missing") or ""
        text = f"{exc.message}: {detail}" if detail else exc.message
        return Decoded(msg.seq, msg.subject, msg.data, None, text[:500])
    return Decoded(msg.seq, msg.subject, msg.data, event, None, event.signing_input() if event.sigs else b"")


def _check_one(kid: str, sig: bytes, message: bytes) -> bool:
    return verify_sig(kid, sig, message)


def _check_chunk(items: Sequence[tuple[str, bytes, bytes]]) -> list[bool]:
    return [_check_one(kid, sig, message) for kid, sig, message in items]


class SignatureChecker:
    """Checks the cryptographic part of many signatures.

    Small batches (a live follower's) are checked in the calling thread. Large ones (replay,
    audit, catching up) are split over worker *processes*: threads would not help, because
    each short verify call hands the GIL back and then waits up to a switch interval to get
    it again while the event loop runs Python code.
    """

    def __init__(self, workers: int | None = None, *, chunk: int = 512, inline: int = 1024) -> None:
        self.workers = max(1, workers or min(8, os.cpu_count() or 2))
        self.chunk = chunk
        self.inline = inline  # up to this many signatures are checked in the calling thread
        self._pool: ProcessPoolExecutor | None = None
        self.backend = signature_backend()

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # fork: the workers need nothing but this module, and unlike spawn/forkserver it does
            # not re-import the caller's main script (which may lack a __main__ guard)
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            context = multiprocessing.get_context(method)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
        return self._pool

    async def check(self, batch: Sequence[Decoded]) -> None:
        """Fill ``sig_ok`` of every decoded message in ``batch``."""
        items: list[tuple[str, bytes, bytes]] = []
        owners: list[Decoded] = []
        for item in batch:
            if item.event is None:
                continue
            for sig in item.event.sigs:
                items.append((sig.kid, sig.sig, item.signing_input))
                owners.append(item)
        if not items:
            return
        if len(items) <= self.inline or self.workers == 1:
            results = _check_chunk(items)
        else:
            loop = asyncio.get_running_loop()
            size = max(self.chunk, -(-len(items) // (self.workers * 2)))
            parts = [items[i : i + size] for i in range(0, len(items), size)]
            chunks = await asyncio.gather(*(loop.run_in_executor(self._executor(), _check_chunk, p) for p in parts))
            results = [ok for part in chunks for ok in part]
        for item in batch:
            item.sig_ok = []
        for owner, ok in zip(owners, results, strict=True):
            owner.sig_ok.append(ok)

    def close(self) -> None:
        """Stop the worker processes; idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def verdict_at(keyring: Keyring, event: Envelope, seq: int, sig_ok: Sequence[bool]) -> Verdict:
    """:meth:`Keyring.verify` at ``seq`` with the cryptographic results already known."""
    return Keyring.verify(keyring, event, seq, crypto_ok=sig_ok)


@dataclass
class CachedKeyring(Keyring):
    """A :class:`Keyring` that remembers the cryptographic result of each signature it has seen.

    The registry rules are applied afresh on every call (:func:`verdict_at`); only the
    position-independent answer "does this signature by this kid verify over this exact
    signing input" is reused, keyed by (kid, signature, SHA-256 of the signing input).
    The policy functions re-verify proposals and approvals many times; this makes that cheap.
    """

    crypto: OrderedDict[tuple[str, bytes, bytes], bool] = field(default_factory=OrderedDict, repr=False, compare=False)
    crypto_limit: int = field(default=200_000, repr=False, compare=False)

    def remember(self, batch: Sequence[Decoded]) -> None:
        """Keep the results :meth:`SignatureChecker.check` computed for ``batch``."""
        for item in batch:
            event = item.event
            if event is None or len(item.sig_ok) != len(event.sigs):
                continue
            digest = hashlib.sha256(item.signing_input).digest()
            for sig, ok in zip(event.sigs, item.sig_ok, strict=True):
                self.crypto[(sig.kid, sig.sig, digest)] = ok
        while len(self.crypto) > self.crypto_limit:
            self.crypto.popitem(last=False)

    def verify(
        self,
        event: Envelope,
        seq: int,
        *,
        signing_input: bytes | None = None,
        crypto_ok: Sequence[bool] | None = None,
    ) -> Verdict:
        if not event.sigs or crypto_ok is not None:
            return super().verify(event, seq, signing_input=signing_input, crypto_ok=crypto_ok)
        message = signing_input if signing_input is not None else event.signing_input()
        digest = hashlib.sha256(message).digest()
        results: list[bool] = []
        for sig in event.sigs:
            key = (sig.kid, sig.sig, digest)
            ok = self.crypto.get(key)
            if ok is None:
                ok = _check_one(sig.kid, sig.sig, message)
                self.crypto[key] = ok
            results.append(ok)
        return verdict_at(self, event, seq, results)
