"""``concat``: join a row's distinct predictions; the hedge that moves the embedding toward their mean."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from recoverlib.combine.base import Draft, Part, Sample, Strategy, distinct_texts, unique_texts
from recoverlib.errors import RecoverlibError


@dataclass(frozen=True)
class ConcatConfig:
    """Join distinct non-empty predictions with ``separator``, in round-robin order across adapters.

    ``dedup_threshold``: also drop a prediction whose embedding cosine to an earlier kept one is at least this
    (near-duplicates add tokens but barely move the embedding); None: exact duplicates only (no embedder).
    """

    strategy: ClassVar[str] = "concat"  # its name in JSON configs and the registry

    separator: str = " "
    max_parts: int | None = None  # keep at most this many distinct predictions (None: all)
    dedup_threshold: float | None = None

    def __post_init__(self):
        if self.max_parts is not None and self.max_parts < 1:
            raise RecoverlibError(f"concat: max_parts must be >= 1 or null (got {self.max_parts})")
        if self.dedup_threshold is not None and not -1.0 <= self.dedup_threshold <= 1.0:
            raise RecoverlibError(
                f"concat: dedup_threshold must be in [-1, 1] or null (got {self.dedup_threshold})"
            )

    @property
    def needs_embeddings(self) -> bool:
        return self.dedup_threshold is not None


def concat_predictions(texts: Sequence[str], separator: str = " ", max_parts: int | None = None) -> str:
    """Distinct non-empty texts joined in first-seen order; duplicates compare case- and
    space-insensitively."""
    return separator.join(unique_texts(texts)[:max_parts])


def near_dedup(texts: Sequence[str], vectors: np.ndarray, threshold: float) -> list[int]:
    """Indexes of ``texts`` kept after dropping each one within cosine ``threshold`` of an earlier kept one.

    ``vectors``: (len(texts), dim), L2-normalised. First-seen order wins, so the round-robin order decides.
    """
    kept: list[int] = []
    for i in range(len(texts)):
        if not kept or float(np.max(vectors[kept] @ vectors[i])) < threshold:
            kept.append(i)
    return kept


def distinct_predictions(samples: Sequence[Sample], ctx, dedup_threshold: float | None) -> list[str]:
    """Distinct non-empty predictions in round-robin order, near-duplicates dropped when a threshold is
    set."""
    texts = distinct_texts(samples)
    if dedup_threshold is None or len(texts) < 2:
        return texts
    return [texts[i] for i in near_dedup(texts, ctx.embed(texts), dedup_threshold)]


def _concat(config: ConcatConfig, samples: Sequence[Sample], ctx, draft) -> Draft:
    texts = distinct_predictions(samples, ctx, config.dedup_threshold)[: config.max_parts]
    return Draft(tuple(Part(t) for t in texts), config.separator)


STRATEGY = Strategy(ConcatConfig, _concat)
