"""``embedding-search``: predict the target's embedding, then search words toward it (the 2nd and 5th places
searched tokens to match a predicted embedding).

Per row it starts from what ``embedding`` picks (mbr's candidates reranked by ``(1 - weight) * mbr's
expected score + weight * cos^3(candidate, predicted embedding)``) and appends up to ``steps`` words, one per
step, with the append-one-word beam search of :mod:`recoverlib.combine.search`, maximising that same
objective. The objective ranks mbr's candidates exactly as ``embedding`` does and the search never returns a
string it scores below its start, so the result is ``embedding``'s choice unless some words score higher.

The words come from the row's own samples (``vocab="row"``): what the adapters believe the prompt says.
Searched texts are embedded without caching them (thousands of throwaway strings per run). The appended words
are a ``suffix`` part of the draft, so a later ``budget`` step sees them as such.

Needs the rows' pairs in the context (``CombineContext.pairs``: ``tune``/``combine --rows CSV``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from recoverlib.combine.base import SUFFIX, Draft, Part, Sample, Strategy
from recoverlib.combine.mbr import MbrConfig, candidates, expected_of
from recoverlib.combine.search import SearchConfig, beam_search, word_vocabulary
from recoverlib.errors import RecoverlibError
from recoverlib.heads.cache import predicted_embeddings

VOCABS = ("row",)


@dataclass(frozen=True)
class EmbeddingSearchConfig:
    """``path``: the embedding head folder; ``weight`` in [0, 1]: the prediction's share against mbr's
    expected score (as ``embedding``); ``steps``: words appended at most; ``beam``: strings kept per step
    (1 = greedy); ``vocab``: where the words come from (``row``: the row's samples); ``max_parts``: mbr's."""

    strategy: ClassVar[str] = "embedding-search"  # its name in JSON configs and the registry

    path: str = ""
    weight: float = 1.0
    steps: int = 3
    beam: int = 1
    vocab: str = "row"
    max_parts: int = 4

    def __post_init__(self):
        name = self.strategy
        if not self.path:
            raise RecoverlibError(f"{name}: path (a head folder from `train --head embedding`) is required")
        if not 0.0 <= self.weight <= 1.0:
            raise RecoverlibError(f"{name}: weight must be in [0, 1] (got {self.weight})")
        for field in ("steps", "beam", "max_parts"):
            if getattr(self, field) < 1:
                raise RecoverlibError(f"{name}: {field} must be >= 1 (got {getattr(self, field)})")
        if self.vocab not in VOCABS:
            raise RecoverlibError(f"{name}: vocab must be one of {', '.join(VOCABS)} (got {self.vocab!r})")

    @property
    def mbr(self) -> MbrConfig:
        return MbrConfig(max_parts=self.max_parts)

    @property
    def search(self) -> SearchConfig:
        return SearchConfig(steps=self.steps, beam=self.beam, vocab_size=None)


def row_objective(config: EmbeddingSearchConfig, samples: Sequence[Sample], target: np.ndarray,
                  ctx) -> Callable[..., np.ndarray]:
    """``score(texts, remember=False) -> (len(texts),)``: ``(1 - weight) * mbr's expected score against the
    row's samples + weight * cos^3(text, target)``, the ``embedding`` strategy's ranking for any text.

    ``remember``: cache the texts' embeddings (mbr's candidates, as ``embedding`` does) or not (searched
    strings)."""
    mbr = config.mbr

    def score(texts: list[str], remember: bool = False) -> np.ndarray:
        cand = ctx.embed(texts, remember=remember)
        near = ctx.sharp(cand, target[None, :])[:, 0]
        return (1 - config.weight) * expected_of(mbr, texts, cand, samples, ctx) + config.weight * near

    return score


def row_vocabulary(config: EmbeddingSearchConfig, samples: Sequence[Sample]) -> list[str]:
    """The words the search may append for a row (``vocab="row"``: every word of its samples, most frequent
    first)."""
    return word_vocabulary([s.text for s in samples], None)


def search_row(config: EmbeddingSearchConfig, samples: Sequence[Sample], target: np.ndarray, ctx) -> Draft:
    """The row's draft: ``embedding``'s pick among mbr's candidates, then the words whose addition raises the
    objective (a ``suffix`` part; none when no word helps)."""
    drafts = candidates(config.mbr, samples, ctx)
    if not drafts:
        return Draft()
    score = row_objective(config, samples, target, ctx)
    start = drafts[int(np.argmax(score([d.text for d in drafts], remember=True)))]
    vocab = row_vocabulary(config, samples)
    if not vocab:
        return start  # samples without a single word: nothing to append
    found = beam_search(score, vocab, config.search, start=start.text, progress=False)
    added = found.text[len(start.text):].strip()
    return start.replace([*start.parts, Part(added, SUFFIX)]) if added else start


def _prefetch(config: EmbeddingSearchConfig, samples: Sequence[Sample], ctx) -> list[str]:
    return [d.text for d in candidates(config.mbr, samples, ctx)]


def _prepare(config: EmbeddingSearchConfig, rows: Mapping[str, Sequence[Sample]], ctx) -> None:
    predicted_embeddings(ctx, config.path, rows)


def _embedding_search(config: EmbeddingSearchConfig, samples: Sequence[Sample], ctx, draft) -> Draft:
    target = predicted_embeddings(ctx, config.path, [ctx.row])[ctx.row]
    return search_row(config, samples, target, ctx)


STRATEGY = Strategy(EmbeddingSearchConfig, _embedding_search, embeds=True, prefetch=_prefetch,
                    prepare=_prepare)
