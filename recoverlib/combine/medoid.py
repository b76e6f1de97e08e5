"""``medoid``: the one sample most similar to the others (mean cos^3 under the metric): a clean single answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recoverlib.combine.base import Sample, register_strategy, round_robin


@dataclass(frozen=True)
class MedoidConfig:
    """No options. Duplicates count: a text sampled three times weighs three times (it is likelier)."""


def medoid_index(sharp: np.ndarray) -> int:
    """Index of the medoid given the (n, n) sharpened-cosine matrix of n samples; ties go to the earliest."""
    n = len(sharp)
    if n <= 2:
        return 0  # two samples are each other's equals: keep round-robin order
    off_diagonal = (sharp.sum(axis=1) - np.diag(sharp)) / (n - 1)
    return int(np.argmax(off_diagonal))


@register_strategy(MedoidConfig, name="medoid", embeds=True)
def _medoid(config: MedoidConfig, samples: Sequence[Sample], ctx, draft) -> str:
    texts = [s.text.strip() for s in round_robin(samples) if s.text.strip()]
    if len(texts) <= 2:
        return texts[0] if texts else ""
    vectors = ctx.embed(texts)
    return texts[medoid_index(ctx.sharp(vectors, vectors))]
