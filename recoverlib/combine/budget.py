"""``budget``: fit the combined prompt into the embedder's token limit by dropping the least useful parts.

The metric's embedder ignores every token past its limit (256 for sentence-t5-base, read from the loaded
model), so an over-long hedge silently loses its tail: often the suffix or mean prompt that was tuned to be
there. Instead, whole parts go, least useful first:

1. predictions, each time the one whose removal keeps the rest closest (mean cos^3) to the row's samples;
2. the suffix, word by word from its end;
3. mean-prompt pieces, last first;
4. only then the last remaining part is cut word by word (a single prediction longer than the limit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from recoverlib.combine.base import (
    MEAN,
    PREDICTION,
    SUFFIX,
    Draft,
    Part,
    Sample,
    Strategy,
    default_draft,
)
from recoverlib.errors import RecoverlibError
from recoverlib.metric import sharpen


@dataclass(frozen=True)
class BudgetConfig:
    """``max_tokens``: the limit, special tokens included; None (default) or larger: the embedder's own
    limit."""

    strategy: ClassVar[str] = "budget"  # its name in JSON configs and the registry

    max_tokens: int | None = None

    def __post_init__(self):
        if self.max_tokens is not None and self.max_tokens < 3:
            raise RecoverlibError(f"budget: max_tokens must be >= 3 or null (got {self.max_tokens})")


def _fits(draft: Draft, ctx, limit: int) -> bool:
    return ctx.token_count(draft.text) <= limit


def approx_utility(vectors: np.ndarray, weights: np.ndarray, targets: np.ndarray, power: int = 3) -> float:
    """Mean cos^power of the weighted mean of ``vectors`` (k, dim) against ``targets`` (n, dim).

    Mean-pooling embedders make a concatenation's embedding close to the token-weighted mean of its parts'
    embeddings; that estimate costs no model call, which matters when many rows overflow.
    """
    mean = (weights[:, None] * vectors).sum(axis=0)
    mean /= max(float(np.linalg.norm(mean)), 1e-12)
    return float(np.mean(sharpen(targets @ mean, power)))


def _drop_predictions(draft: Draft, samples: Sequence[Sample], ctx, limit: int) -> Draft:
    parts = list(draft.parts)
    targets = ctx.embed([s.text.strip() for s in samples if s.text.strip()])
    while not _fits(draft.replace(parts), ctx, limit):
        idx = [i for i, p in enumerate(parts) if p.kind == PREDICTION]
        if len(idx) < 2:
            break
        vectors = ctx.embed([parts[i].text for i in idx])
        weights = np.array([ctx.token_count(parts[i].text) for i in idx], dtype=np.float64)
        keep = np.ones(len(idx), dtype=bool)
        gains = []
        for j in range(len(idx)):
            keep[j] = False
            gains.append(approx_utility(vectors[keep], weights[keep], targets, ctx.power))
            keep[j] = True
        del parts[idx[int(np.argmax(gains))]]
    return draft.replace(parts)


def _cut_words(parts: list[Part], i: int, draft: Draft, ctx, limit: int) -> list[Part]:
    """Drop words from the end of ``parts[i]`` until the draft fits (binary search; "" if it never does)."""
    words = parts[i].text.split()

    def with_n(n: int) -> list[Part]:
        return [*parts[:i], Part(" ".join(words[:n]), parts[i].kind), *parts[i + 1 :]]

    lo, hi = 0, len(words)  # invariant: with_n(lo) fits (nothing of part i fits, at worst) or lo == 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _fits(draft.replace(with_n(mid)), ctx, limit):
            lo = mid
        else:
            hi = mid - 1
    return [p for p in with_n(lo) if p.text]


def fit_budget(draft: Draft, samples: Sequence[Sample], ctx, limit: int) -> Draft:
    """``draft`` cut to at most ``limit`` embedder tokens, least useful parts first (see the module doc)."""
    if _fits(draft, ctx, limit):
        return draft
    draft = _drop_predictions(draft, samples, ctx, limit)
    parts = list(draft.parts)
    for i in reversed([i for i, p in enumerate(parts) if p.kind == SUFFIX]):
        if _fits(draft.replace(parts), ctx, limit):
            return draft.replace(parts)
        parts = _cut_words(parts, i, draft, ctx, limit)
    for i in reversed([i for i, p in enumerate(parts) if p.kind == MEAN]):
        if len(parts) == 1 or _fits(draft.replace(parts), ctx, limit):
            break
        del parts[i]
    while parts and not _fits(draft.replace(parts), ctx, limit):
        # One part is left, or parts that each are needed; cut the last one (it is then removed if empty).
        parts = _cut_words(parts, len(parts) - 1, draft, ctx, limit)
    return draft.replace(parts)


def _budget(config: BudgetConfig, samples: Sequence[Sample], ctx, draft) -> Draft:
    draft = draft if draft is not None else default_draft(samples)
    limit = ctx.max_tokens if config.max_tokens is None else min(config.max_tokens, ctx.max_tokens)
    return fit_budget(draft, samples, ctx, limit)


STRATEGY = Strategy(BudgetConfig, _budget, embeds=True)
