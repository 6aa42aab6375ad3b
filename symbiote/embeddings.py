"""Sentence embeddings from wordllama's bundled static model (256 dimensions).

The model is loaded from wordllama's own package folder with downloads disabled: nothing is
fetched at run time. Used for intent matching (agents) and memory vectors (projections).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MAX_TOKENS", "Embedder", "load_embedder"]

# The tokenizer's own thread pool would hold locks across a fork, and the projections fork
# worker processes that embed: keep tokenizing single-threaded (the texts are short).
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
MAX_TOKENS = 512
"""Tokens of a text that count: a text's vector is the mean of its first ``MAX_TOKENS`` tokens'. A
batch is padded to its longest text, so without a bound one long text would cost memory in
proportion to the batch size times its length (gigabytes for one 32 KB input)."""


class Embedder:
    """Unit-length sentence vectors from wordllama (256 dimensions)."""

    dim = 256

    def __init__(self, model: Any) -> None:
        self._model = model

    def embed(self, texts: list[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        vectors = np.asarray(self._model.embed(texts, norm=True), dtype=np.float32)
        return vectors


@functools.cache
def load_embedder() -> Embedder:
    """Load the bundled wordllama model once per process (offline)."""
    import wordllama
    from wordllama import WordLlama

    folder = Path(wordllama.__file__).parent
    model = WordLlama.load(cache_dir=folder, disable_download=True, dim=256)
    model.tokenizer.enable_truncation(max_length=MAX_TOKENS)
    return Embedder(model)
