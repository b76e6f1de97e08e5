"""What embedding strategies share across rows: the scorer (loaded lazily) and caches of embeddings and token
counts.

Configs stay plain data (they serialise to JSON); the loaded model lives here instead. Every text is embedded
at most once per context, so a tuning run that tries twenty strategies embeds each sample once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from recoverlib.errors import RecoverlibError
from recoverlib.heads.cache import close_heads
from recoverlib.heads.engines import DEFAULT_HEAD_ENGINE
from recoverlib.metric import COMPETITION_EMBEDDER, Scorer, sharpen


@dataclass
class CombineContext:
    """Embedding context for :func:`~recoverlib.combine.combine` and friends.

    ``scorer``: a ready :class:`Scorer`; if None, one for ``embedder`` is made on first use (so strategies
    that never embed never load a model). Embeddings are L2-normalised float32 rows, so a dot product is a
    cosine.
    """

    scorer: Scorer | None = None
    embedder: str = COMPETITION_EMBEDDER
    power: int = 3
    # id -> (original_text, rewritten_text): what strategies with a learned head (verifier, embedding) read
    pairs: Mapping[str, tuple[str, str]] = field(default_factory=dict, repr=False)
    row: str | None = None  # the row being combined (set by combine_rows)
    head_engine: str = DEFAULT_HEAD_ENGINE  # where learned heads run (recoverlib.heads.engines)
    heads: dict = field(default_factory=dict, repr=False)  # loaded heads and their outputs, by strategy
    _vectors: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _tokens: dict[str, int] = field(default_factory=dict, repr=False)

    def at_row(self, row: str) -> CombineContext:
        """This context, now combining ``row`` (its pair is ``pairs[row]``)."""
        self.row = row
        return self

    def pair(self, row: str | None = None) -> tuple[str, str]:
        """(original_text, rewritten_text) of ``row`` (default: the current row); one line when unknown."""
        row = self.row if row is None else row
        if row not in self.pairs:
            raise RecoverlibError(
                f"row {row!r} has no (original, rewritten) pair: a learned head needs the rows' texts "
                "(pass the split's CSV, e.g. tune/combine --rows FILE)"
            )
        return self.pairs[row]

    def get_scorer(self) -> Scorer:
        if self.scorer is None:
            self.scorer = Scorer(self.embedder, power=self.power)
        return self.scorer

    @property
    def embedder_name(self) -> str:
        """The embedder's name, without loading it."""
        return str(self.scorer.embedder if self.scorer is not None else self.embedder)

    def prefetch(self, texts: Iterable[str]) -> None:
        """Embed every text not cached yet, in one batch (the fast path: one encode call for many rows)."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if not todo:
            return
        self._vectors.update(zip(todo, self._normalised(todo), strict=True))

    def forget(self) -> None:
        """Drop the cached embeddings and token counts (a run combining block by block keeps memory
        bounded)."""
        self._vectors.clear()
        self._tokens.clear()

    def close(self) -> None:
        """Close the head engines this context started (a vLLM head engine holds the process environment
        vLLM wrote, e.g. ``LD_PRELOAD``, until it closes) and drop the heads; the context stays usable (a
        later head starts its engine again)."""
        close_heads(self)

    def __enter__(self) -> CombineContext:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def embed(self, texts: Sequence[str], remember: bool = True) -> np.ndarray:
        """(len(texts), dim) normalised embeddings, from the cache where possible.

        ``remember=False``: do not cache new texts (searches embed thousands of throwaway candidates).
        """
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if remember:
            self.prefetch(texts)
            return np.stack([self._vectors[t] for t in texts])
        todo = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        fresh = dict(zip(todo, self._normalised(todo), strict=True)) if todo else {}
        return np.stack([self._vectors[t] if t in self._vectors else fresh[t] for t in texts])

    def _normalised(self, texts: list[str]) -> np.ndarray:
        emb = self.get_scorer().embed(texts)
        return emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)

    @property
    def dim(self) -> int:
        if self._vectors:
            return len(next(iter(self._vectors.values())))
        return int(self.get_scorer().model.get_sentence_embedding_dimension())

    def sharp(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Sharpened cosine matrix of normalised ``a`` (n, dim) and ``b`` (m, dim): (n, m), sign kept."""
        return sharpen(a @ b.T, self.power)

    @property
    def max_tokens(self) -> int:
        """Tokens the embedder reads, special tokens included (256 for sentence-t5-base)."""
        return self.get_scorer().max_seq_length

    def token_count(self, text: str) -> int:
        """Tokens ``text`` takes in the embedder, special tokens included, untruncated."""
        got = self._tokens.get(text)
        if got is None:
            tok = self.get_scorer().tokenizer
            got = self._tokens[text] = len(tok(text, add_special_tokens=True, truncation=False)["input_ids"])
        return got
