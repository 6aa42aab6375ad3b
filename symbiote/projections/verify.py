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
import ctypes
import ctypes.util
import hashlib
import multiprocessing
import os
import signal
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import structlog

from symbiote.bus.envelope import Envelope, check_wire, envelope_of, from_accepted_wire, peek_id
from symbiote.bus.events import body_problem
from symbiote.bus.stream import Bus, StoredMsg
from symbiote.embeddings import load_embedder
from symbiote.errors import DecodeError
from symbiote.projections.jsontext import json_text
from symbiote.signers.keyring import Keyring, Verdict
from symbiote.signers.keys import signature_backend, verify_sig

__all__ = [
    "CHECKPOINT_SUBJECT",
    "CachedKeyring",
    "Decoded",
    "WorkerPool",
    "decode",
    "entry_hash",
    "reading",
    "verdict_at",
]

CHECKPOINT_SUBJECT = "sym.audit.checkpoint"
log = structlog.get_logger("symbiote.projections")
T = TypeVar("T")
R = TypeVar("R")
_PR_SET_PDEATHSIG = 1
_EMBED_INLINE = 64  # up to this many texts are embedded in the calling thread


@contextlib.asynccontextmanager
async def reading(
    bus: Bus, subject: str = "sym.>", *, from_seq: int = 1, follow: bool = False
) -> AsyncIterator[AsyncIterator[StoredMsg]]:
    """``async with reading(bus, ...) as messages``: :meth:`Bus.read`, closed (consumer removed) on leaving."""
    messages = bus.read(subject, from_seq=from_seq, follow=follow)
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
    """One stored message, decoded (``event``) or not (``error``), with what can be checked without
    knowing its position: the cryptographic result of each signature, whether the body fits its
    type (``body_problem``), the body's JSON text and the SHA-256 of the stored bytes."""

    seq: int
    subject: str
    data: bytes
    event: Envelope | None
    error: str | None
    raw_sha256: bytes
    sig_ok: list[bool] = field(default_factory=list)
    body_problem: str | None = None
    body_json: str | None = None

    @property
    def peeked_id(self) -> str | None:
        return self.event.id if self.event is not None else peek_id(self.data)


_Checked = tuple[str | None, list[bool], str | None, str | None, bytes]
"""What a worker sends back for one message: (error, sig_ok, body_problem, body_json, raw_sha256)."""


def _examine(data: bytes) -> tuple[dict[str, Any] | None, bytes, _Checked]:
    """Decode, check the signatures' cryptography and the body of one message: (its decoded
    map if it is an event, its signing input, what was found)."""
    raw_sha256 = hashlib.sha256(data).digest()
    try:
        raw, message = check_wire(data)
    except DecodeError as exc:
        detail = exc.fields.get("error") or exc.fields.get("missing") or ""
        text = f"{exc.message}: {detail}" if detail else exc.message
        return None, b"", (text[:500], [], None, None, raw_sha256)
    sig_ok = [verify_sig(sig["kid"], sig["sig"], message) for sig in raw["sigs"]]
    problem = body_problem(raw["type"], raw["body"], raw["id"])
    return raw, message, (None, sig_ok, problem, json_text(raw["body"]), raw_sha256)


def _examine_chunk(chunk: list[bytes]) -> list[_Checked]:
    """:func:`_examine` of each message, without the envelopes (cheaper to decode again than to send)."""
    return [_examine(data)[2] for data in chunk]


def _decoded(msg: StoredMsg, event: Envelope | None, checked: _Checked) -> Decoded:
    error, sig_ok, body_problem, body_json, raw_sha256 = checked
    return Decoded(msg.seq, msg.subject, msg.data, event, error, raw_sha256, sig_ok, body_problem, body_json)


def decode(msg: StoredMsg) -> Decoded:
    """Decode and examine one message in this process (see :meth:`WorkerPool.decode`)."""
    raw, message, checked = _examine(msg.data)
    return _decoded(msg, envelope_of(raw, message) if raw is not None else None, checked)


def _embed_chunk(texts: list[str]) -> Any:
    return load_embedder().embed(texts)


def _die_with_parent() -> None:
    """In a worker: be killed when the process that started the pool dies (even by SIGKILL)."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


class WorkerPool:
    """Worker processes for the CPU-bound parts of projecting: signature checks and embeddings.

    Small batches (a live follower's) are handled in the calling thread. Large ones (replay,
    audit, catching up) are split over worker *processes*: threads would not help, because
    each short call hands the GIL back and then waits up to a switch interval to get it again
    while the event loop runs Python code.
    """

    def __init__(self, workers: int | None = None, *, chunk: int = 512, inline: int = 1024) -> None:
        self.workers = max(1, workers or min(8, os.cpu_count() or 2))
        self.chunk = chunk
        self.inline = inline  # up to this many signatures are checked in the calling thread
        self._pool: ProcessPoolExecutor | None = None
        self.backend = signature_backend()

    def start(self, *, embedding: bool = False) -> None:
        """Start the worker processes now (idempotent); with ``embedding``, load the model first so
        they share it.

        Call it early, from the event loop's thread, before other threads do work: the workers
        are forked, and a fork copies whatever locks other threads hold at that moment. A pool
        that was not started forks on its first large batch.
        """
        if embedding:
            load_embedder()
        if self.workers > 1:
            pool = self._executor()
            for future in [pool.submit(os.getpid) for _ in range(self.workers)]:
                future.result()

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # fork: the workers need nothing but this module, and unlike spawn/forkserver it does
            # not re-import the caller's main script (which may lack a __main__ guard)
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            context = multiprocessing.get_context(method)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_die_with_parent)
        return self._pool

    async def decode(self, msgs: Sequence[StoredMsg]) -> list[Decoded]:
        """Decode ``msgs`` and do every position-independent check of them (see :class:`Decoded`).

        In the worker processes for a large batch: each sends back only its results, and this
        process unpacks the accepted envelopes again (cheaper than receiving them pickled).
        """
        if len(msgs) <= self.inline or self.workers == 1:
            return [decode(msg) for msg in msgs]
        size = max(self.chunk, -(-len(msgs) // (self.workers * 2)))
        chunks = await self._map(_examine_chunk, [m.data for m in msgs], size)
        found: list[Decoded] = []
        for msg, checked in zip(msgs, (c for part in chunks for c in part), strict=True):
            found.append(_decoded(msg, from_accepted_wire(msg.data) if checked[0] is None else None, checked))
        return found

    async def embed(self, texts: list[str]) -> Any:
        """Unit vectors of ``texts`` from the bundled model (:func:`~symbiote.embeddings.load_embedder`)."""
        if len(texts) <= _EMBED_INLINE or self.workers == 1:
            return load_embedder().embed(texts)
        size = max(_EMBED_INLINE, -(-len(texts) // self.workers))
        return np.concatenate(await self._map(_embed_chunk, texts, size))

    async def _map(self, function: Callable[[list[T]], R], items: Sequence[T], size: int) -> list[R]:
        """``function`` of each run of ``size`` items, in the worker processes, results in order."""
        loop = asyncio.get_running_loop()
        parts = [list(items[i : i + size]) for i in range(0, len(items), size)]
        return list(await asyncio.gather(*(loop.run_in_executor(self._executor(), function, p) for p in parts)))

    def close(self) -> None:
        """Stop the worker processes; idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def verdict_at(keyring: Keyring, event: Envelope, seq: int, sig_ok: Sequence[bool]) -> Verdict:
    """:meth:`Keyring.verify` at ``seq`` with the cryptographic results already known.

    ``event`` is the message stored at ``seq``; a :class:`CachedKeyring` keeps the verdict, so
    the policy functions that verify it again at its own position get it for free.
    """
    verdict = Keyring.verify(keyring, event, seq, crypto_ok=sig_ok)
    if isinstance(keyring, CachedKeyring):
        keyring.keep(event, seq, verdict)
    return verdict


@dataclass
class CachedKeyring(Keyring):
    """A :class:`Keyring` that remembers verdicts and the cryptographic result of signatures.

    The policy functions re-verify proposals, approvals and decisions many times; this makes
    that cheap. Two things are kept:

    - the verdict of each message at its own stream position, keyed by (seq, event id), as
      :func:`verdict_at` computed it while folding in log order (every registry event before
      that position had been applied, and later registry events cannot change a verdict at an
      earlier position: keys are valid from their registration to their revocation);
    - the position-independent answer "does this signature by this kid verify over this exact
      signing input", keyed by (kid, signature, SHA-256 of the signing input); the registry
      rules are then applied afresh.
    """

    crypto: OrderedDict[tuple[str, bytes, bytes], bool] = field(default_factory=OrderedDict, repr=False, compare=False)
    crypto_limit: int = field(default=50_000, repr=False, compare=False)
    verdicts: OrderedDict[tuple[int, str], Verdict] = field(default_factory=OrderedDict, repr=False, compare=False)

    def keep(self, event: Envelope, seq: int, verdict: Verdict) -> None:
        """Remember the verdict of ``event``, the message at ``seq``, at its own position."""
        self.verdicts[(seq, event.id)] = verdict
        if len(self.verdicts) > self.crypto_limit:
            self.verdicts.popitem(last=False)

    def remember(self, batch: Sequence[Decoded]) -> None:
        """Keep the results :meth:`WorkerPool.check` computed for ``batch``."""
        for item in batch:
            event = item.event
            if event is None or len(item.sig_ok) != len(event.sigs):
                continue
            digest = hashlib.sha256(event.signing_input()).digest()
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
        kept = self.verdicts.get((seq, event.id))
        if kept is not None:
            return kept
        message = signing_input if signing_input is not None else event.signing_input()
        digest = hashlib.sha256(message).digest()
        results: list[bool] = []
        for sig in event.sigs:
            key = (sig.kid, sig.sig, digest)
            ok = self.crypto.get(key)
            if ok is None:
                ok = verify_sig(sig.kid, sig.sig, message)
                self.crypto[key] = ok
            results.append(ok)
        return verdict_at(self, event, seq, results)
