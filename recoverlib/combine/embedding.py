"""``embedding``: rerank mbr's candidates by their closeness to the target embedding a learned head predicts
for the row's pair (the 2nd and 5th places predicted the embedding directly).

The head (``recoverlib train --head embedding``) predicts the truth's embedding under the metric's embedder;
here it is put into the context's geometry (``t5like`` applied to the prediction as to any embedding) and
each candidate gets ``(1 - weight) * mbr's expected score + weight * cos^3(candidate, prediction)``.

Needs the rows' pairs in the context (``CombineContext.pairs``: ``tune``/``combine --rows CSV``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from recoverlib.combine.base import Draft, Sample, Strategy
from recoverlib.combine.mbr import MbrConfig, candidates, expected_scores
from recoverlib.errors import RecoverlibError
from recoverlib.heads.cache import predicted_embeddings


@dataclass(frozen=True)
class EmbeddingConfig:
    """``path``: the embedding head folder; ``weight`` in [0, 1]: the prediction's share against mbr's
    expected score; ``max_parts``: mbr's."""

    strategy: ClassVar[str] = "embedding"  # its name in JSON configs and the registry

    path: str = ""
    weight: float = 1.0
    max_parts: int = 4

    def __post_init__(self):
        if not self.path:
            raise RecoverlibError("embedding: path (a head folder from `train --head embedding`) is required")
        if not 0.0 <= self.weight <= 1.0:
            raise RecoverlibError(f"embedding: weight must be in [0, 1] (got {self.weight})")

    @property
    def mbr(self) -> MbrConfig:
        return MbrConfig(max_parts=self.max_parts)


def _prefetch(config: EmbeddingConfig, samples: Sequence[Sample], ctx) -> list[str]:
    return [d.text for d in candidates(config.mbr, samples, ctx)]


def _prepare(config: EmbeddingConfig, rows: Mapping[str, Sequence[Sample]], ctx) -> None:
    predicted_embeddings(ctx, config.path, rows)


def _embedding(config: EmbeddingConfig, samples: Sequence[Sample], ctx, draft) -> Draft:
    drafts = candidates(config.mbr, samples, ctx)
    if not drafts:
        return Draft()
    target = predicted_embeddings(ctx, config.path, [ctx.row])[ctx.row]
    near = ctx.sharp(ctx.embed([d.text for d in drafts]), target[None, :])[:, 0]
    mixed = (1 - config.weight) * expected_scores(config.mbr, drafts, samples, ctx) + config.weight * near
    return drafts[int(np.argmax(mixed))]


STRATEGY = Strategy(EmbeddingConfig, _embedding, embeds=True, prefetch=_prefetch, prepare=_prepare)
