"""Memory: semantic search over what was asked and what happened (the ``memory`` table).

The projector remembers the text of every verified input and of every command outcome
(except those of ``memory.search`` itself), each with a 256-dimensional wordllama vector.
:class:`MemoryStore` searches them by cosine similarity (pgvector, HNSW index);
:func:`memory_search_builtin` serves the ``memory.search`` command in process, and
:meth:`MemoryStore.recall` is the agent's ``recall`` hook.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from symbiote.agents.extract import starts_with_trigger, strip_trigger
from symbiote.embeddings import Embedder, load_embedder
from symbiote.errors import StoreError
from symbiote.projections.db import DB_ERRORS, create_pool, translate

__all__ = ["MEMORY_SEARCH_DEFINITION", "SEARCH_MIN_SCORE", "MemoryHit", "MemoryStore", "memory_search_builtin"]

MEMORY_SEARCH_DEFINITION = Path(__file__).with_name("memory.search.toml")
"""The TOML definition of the ``memory.search`` command (``executor = "builtin:memory.search"``)."""
log = structlog.get_logger("symbiote.memory")
_MAX_K = 50


@dataclass(frozen=True)
class MemoryHit:
    """One remembered text: its stream position, what it was, when, and how close it is (cosine, 1 = same)."""

    seq: int
    text: str
    at: int
    score: float
    kind: str
    event_id: str
    command_id: str | None = None

    def as_map(self) -> dict[str, Any]:
        """The hit as the ``memory.search`` output shows it."""
        return {"seq": self.seq, "text": self.text, "at": self.at, "score": round(self.score, 6)}


def _asks_for(text: str, query: str) -> bool:
    """Whether a remembered input is this very request: a memory request ("search my memory for
    X") asking for the same X. A past request that says X itself is an answer, not the question."""
    said = text.strip()
    return starts_with_trigger("memory.search", said) and clean_query(said) == query


def clean_query(text: str) -> str:
    """The subject of a memory request: ``"search my memory for X"`` → ``"X"``."""
    stripped = strip_trigger("memory.search", text).rstrip("?").strip()
    return stripped or text.strip()


class MemoryStore:
    """Searches the ``memory`` table of ``schema``. Connects lazily; ``close()`` releases the pool."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        embedder: Embedder | None = None,
        recall_timeout_s: float = 1.0,
        min_score: float = 0.3,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.recall_timeout_s = recall_timeout_s
        self.min_score = min_score
        self._embedder = embedder
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def _get_pool(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                self._pool = await create_pool(self.dsn, self.schema, max_size=4)
            return self._pool

    async def _embed(self, text: str) -> Any:
        if self._embedder is None:
            self._embedder = await asyncio.to_thread(load_embedder)
        return self._embedder.embed([text])[0]

    async def search(self, text: str, k: int = 5) -> list[MemoryHit]:
        """The ``k`` remembered texts closest in meaning to ``text``, best first."""
        k = max(1, min(int(k), _MAX_K))
        if not text.strip():
            return []
        vector = await self._embed(text)
        pool = await self._get_pool()
        with translate("memory search", schema=self.schema):
            async with pool.acquire() as conn, conn.transaction(readonly=True):
                await conn.execute("SET LOCAL hnsw.ef_search = 100")
                rows = await conn.fetch(
                    "SELECT seq, text, at, kind, event_id, command_id, 1 - (embedding <=> $1) AS score "
                    "FROM memory ORDER BY embedding <=> $1, seq DESC LIMIT $2",
                    vector,
                    k,
                )
        return [
            MemoryHit(r["seq"], r["text"], r["at"], float(r["score"]), r["kind"], r["event_id"], r["command_id"])
            for r in rows
        ]

    async def recall(self, text: str, k: int = 3) -> list[str]:
        """The agent's hook: texts of the closest past inputs and outcomes (other than ``text`` itself).

        Best effort: an error or a slow database gives an empty list, never an exception.
        """
        try:
            hits = await asyncio.wait_for(self.search(text, k + 1), self.recall_timeout_s)
        except (StoreError, TimeoutError) as exc:
            log.warning("memory.recall_failed", error=str(exc))
            return []
        wanted = text.strip()
        return [h.text for h in hits if h.text != wanted and h.score >= self.min_score][:k]

    async def close(self) -> None:
        """Close the pool; idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5)
            except (TimeoutError, *DB_ERRORS):
                pool.terminate()

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


SEARCH_MIN_SCORE = 0.25
"""The least similarity a ``memory.search`` hit has: related texts score about 0.3 and more with
the bundled model, unrelated ones about 0.2 and less."""


def memory_search_builtin(
    store: MemoryStore, min_score: float = SEARCH_MIN_SCORE
) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
    """The in-process executor of ``memory.search``: args ``{"query", "k"?}`` → ``{"hits": [...]}``.

    The query is stripped of request words ("search my memory for …", "recall …"), the request
    itself (a remembered memory request for the same query) is left out, and so is every text
    less similar than ``min_score``: nothing is an answer when nothing remembered is related.
    """

    async def search(args: dict[str, Any]) -> dict[str, Any]:
        raw = str(args.get("query", ""))
        k_value = args.get("k", 5)
        k = k_value if isinstance(k_value, int) and not isinstance(k_value, bool) else 5
        k = max(1, min(k, _MAX_K))
        query = clean_query(raw)
        hits = await store.search(query, k + 1)
        related = [h for h in hits if h.score >= min_score]
        kept = [h for h in related if not (h.kind == "input" and _asks_for(h.text, query))][:k]
        return {"query": query, "hits": [h.as_map() for h in kept]}

    return search
