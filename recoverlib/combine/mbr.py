"""``mbr``: minimum Bayes risk under the metric itself.

A row's samples (across adapters, duplicates counted) are draws from the distribution of the answer. Among
candidate prompts, pick the one with the highest expected score, the mean cos^3 against those samples:

- each distinct sample;
- concatenations of subsets: the greedy chain (best single, then the part whose addition most raises the
  estimated score, up to ``max_parts``) and all distinct samples together;
- each of those with and without the mean prompt (when one is configured).

Where the samples agree a single clean answer wins (a hedge only dilutes it); where they split, a
concatenation near their mean wins. A single sample is scored leave-one-out (against the other samples, its
own copy removed): the truth is never literally one of the samples, and counting a candidate's match with
itself as 1 would make every single sample look better than any hedge. ``prior_weight`` mixes in the mean
prompt as a stand-in for the task's prompt distribution: expected = (1 - w) * mean_s cos^3(c, s) + w *
cos^3(c, mean prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from recoverlib.combine.base import Draft, Part, Sample, Strategy
from recoverlib.combine.budget import approx_utility
from recoverlib.combine.concat import distinct_predictions
from recoverlib.combine.mean_prompt import MeanPromptConfig, add_mean_prompt
from recoverlib.errors import RecoverlibError


@dataclass(frozen=True)
class MbrConfig:
    """``max_parts``: longest concatenation tried; ``dedup_threshold``: near-duplicate cosine (None: exact
    only); ``mean_prompt``: also try every candidate with it; ``prior_weight`` in [0, 1] (needs
    ``mean_prompt``); ``leave_one_out``: score a candidate that is a sample against the other samples only."""

    strategy: ClassVar[str] = "mbr"  # its name in JSON configs and the registry

    max_parts: int = 4
    dedup_threshold: float | None = 0.95
    mean_prompt: MeanPromptConfig | None = None
    prior_weight: float = 0.0
    separator: str = " "
    leave_one_out: bool = True

    def __post_init__(self):
        if self.max_parts < 1:
            raise RecoverlibError(f"mbr: max_parts must be >= 1 (got {self.max_parts})")
        if self.dedup_threshold is not None and not -1.0 <= self.dedup_threshold <= 1.0:
            raise RecoverlibError(
                f"mbr: dedup_threshold must be in [-1, 1] or null (got {self.dedup_threshold})"
            )
        if not 0.0 <= self.prior_weight <= 1.0:
            raise RecoverlibError(f"mbr: prior_weight must be in [0, 1] (got {self.prior_weight})")
        if self.prior_weight > 0 and self.mean_prompt is None:
            raise RecoverlibError("mbr: prior_weight > 0 needs a mean_prompt")
        if self.mean_prompt is not None and not isinstance(self.mean_prompt, MeanPromptConfig):
            raise RecoverlibError("mbr: mean_prompt must be a mean-prompt config")


def _targets(samples: Sequence[Sample]) -> list[str]:
    return [s.text.strip() for s in samples if s.text.strip()]


def greedy_chain(vectors: np.ndarray, weights: np.ndarray, targets: np.ndarray, max_parts: int,
                 power: int = 3) -> list[list[int]]:
    """Nested subsets of parts, sizes 2..max_parts, each adding the part that most raises the estimated score.

    ``vectors``: (k, dim) normalised part embeddings; ``weights``: (k,) token counts; ``targets``: (n, dim).
    """
    chosen: list[int] = []
    chain = []
    for _ in range(min(max_parts, len(vectors))):
        rest = [i for i in range(len(vectors)) if i not in chosen]
        gains = [approx_utility(vectors[chosen + [i]], weights[chosen + [i]], targets, power) for i in rest]
        chosen = chosen + [rest[int(np.argmax(gains))]]
        if len(chosen) >= 2:
            chain.append(list(chosen))
    return chain


def candidates(config: MbrConfig, samples: Sequence[Sample], ctx) -> list[Draft]:
    """Every candidate draft of a row (duplicates by text removed), singles first."""
    texts = distinct_predictions(samples, ctx, config.dedup_threshold)
    if not texts:
        return [add_mean_prompt(Draft(), config.mean_prompt)] if config.mean_prompt else []
    subsets = [[i] for i in range(len(texts))]
    if len(texts) > 1 and config.max_parts > 1:
        weights = np.array([ctx.token_count(t) for t in texts], dtype=np.float64)
        subsets += greedy_chain(
            ctx.embed(texts), weights, ctx.embed(_targets(samples)), config.max_parts, ctx.power
        )
        subsets.append(list(range(len(texts))))
    drafts = [Draft(tuple(Part(texts[i]) for i in sub), config.separator) for sub in subsets]
    if config.mean_prompt is not None:
        drafts += [add_mean_prompt(d, config.mean_prompt) for d in drafts]
    unique: dict[str, Draft] = {}
    for d in drafts:
        unique.setdefault(d.text, d)
    return list(unique.values())


def expected_scores(config: MbrConfig, drafts: Sequence[Draft], samples: Sequence[Sample], ctx) -> np.ndarray:
    """(len(drafts),) expected metric of each candidate under the samples (and the prior, if weighted)."""
    texts = [d.text for d in drafts]
    return expected_of(config, texts, ctx.embed(texts), samples, ctx)


def expected_of(config: MbrConfig, texts: Sequence[str], cand: np.ndarray, samples: Sequence[Sample],
                ctx) -> np.ndarray:
    """:func:`expected_scores` of ``texts`` whose normalised embeddings ``cand`` the caller already has (a
    search embeds its throwaway candidates without caching them)."""
    targets = _targets(samples)
    if not targets:
        score = np.zeros(len(texts))
    else:
        sharp = ctx.sharp(cand, ctx.embed(targets))
        mask = np.ones_like(sharp, dtype=bool)
        if config.leave_one_out and len(targets) > 1:
            for i, text in enumerate(texts):
                if text in targets:
                    mask[i, targets.index(text)] = False
        score = (sharp * mask).sum(axis=1) / mask.sum(axis=1)
    if config.prior_weight > 0:
        prior = ctx.sharp(cand, ctx.embed([config.mean_prompt.resolved]))[:, 0]
        score = (1 - config.prior_weight) * score + config.prior_weight * prior
    return score


def _prefetch(config: MbrConfig, samples: Sequence[Sample], ctx) -> list[str]:
    return [d.text for d in candidates(config, samples, ctx)]


def _mbr(config: MbrConfig, samples: Sequence[Sample], ctx, draft) -> Draft:
    drafts = candidates(config, samples, ctx)
    if not drafts:
        return Draft()
    return drafts[int(np.argmax(expected_scores(config, drafts, samples, ctx)))]


STRATEGY = Strategy(MbrConfig, _mbr, embeds=True, prefetch=_prefetch)
