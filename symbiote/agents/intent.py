"""Intent matching: which registered command a request means, with a confidence per candidate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from symbiote.embeddings import Embedder
from symbiote.registry.definition import CommandDefinition

__all__ = ["Candidate", "IntentMatcher"]


@dataclass(frozen=True)
class Candidate:
    """A command the request may mean, and how confident the match is (0..1)."""

    command: str
    confidence: float

    def as_map(self) -> dict[str, Any]:
        return {"command": self.command, "confidence": round(self.confidence, 4)}


class IntentMatcher:
    """Scores a request against every command's description and example phrases.

    A command's score is the best cosine similarity between the request and any of its
    phrases, blended with the similarity to its description; it is clipped to 0..1.
    """

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self._names: list[str] = []
        self._owners: list[int] = []
        self._matrix: np.ndarray[Any, np.dtype[np.float32]] = np.zeros((0, embedder.dim), dtype=np.float32)
        self._signature: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def index(self, definitions: list[CommandDefinition]) -> None:
        """(Re)build the phrase index if the definitions changed."""
        signature = tuple((d.name, d.description, tuple(d.examples)) for d in definitions)
        if signature == self._signature:
            return
        phrases: list[str] = []
        owners: list[int] = []
        for number, definition in enumerate(definitions):
            for phrase in [definition.description, *definition.examples]:
                phrases.append(phrase)
                owners.append(number)
        self._names = [d.name for d in definitions]
        self._owners = owners
        self._matrix = self.embedder.embed(phrases) if phrases else np.zeros((0, self.embedder.dim), np.float32)
        self._signature = signature

    def rank(self, text: str) -> list[Candidate]:
        """Every indexed command with its confidence, best first."""
        if not self._names:
            return []
        query = self.embedder.embed([text])[0]
        sims = self._matrix @ query
        best = np.full(len(self._names), -1.0, dtype=np.float32)
        for sim, owner in zip(sims.tolist(), self._owners, strict=True):
            best[owner] = max(best[owner], sim)
        ranked = sorted(
            (
                Candidate(name, min(max(float(score), 0.0), 1.0))
                for name, score in zip(self._names, best.tolist(), strict=True)
            ),
            key=lambda c: c.confidence,
            reverse=True,
        )
        return ranked
