"""``medoid``: the one sample most similar to the others (mean cos^3 under the metric): a clean single
answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from recoverlib.combine.base import Sample, Strategy, round_robin


@dataclass(frozen=True)
class MedoidConfig:
    """No options. Duplicates count: a text sampled three times weighs three times (it is likelier)."""

    strategy: ClassVar[str] = "medoid"  # its name in JSON configs and the registry


def medoid_index(sharp: np.ndarray) -> int:
    """Index of the medoid given the (n, n) sharpened-cosine matrix of n samples; ties go to the earliest."""
    n = len(sharp)
    if n <= 2:
        return 0  # two samples are each other's equals: keep round-robin order
    off_diagonal = (sharp.sum(axis=1) - np.diag(sharp)) / (n - 1)
    return int(np.argmax(off_diagonal))


def _medoid(config: MedoidConfig, samples: Sequence[Sample], ctx, draft) -> str:
    texts = [s.text.strip() for s in round_robin(samples) if s.text.strip()]
    if len(texts) <= 2:
        return texts[0] if texts else ""
    vectors = ctx.embed(texts)
    return texts[medoid_index(ctx.sharp(vectors, vectors))]


STRATEGY = Strategy(MedoidConfig, _medoid, embeds=True)
