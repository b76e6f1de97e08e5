"""``verifier``: a learned verifier (the 3rd place's classifier on the base) judges each candidate for the
row's pair; predictions it rejects are dropped or down-weighted before choosing, or candidates are reranked
by its predicted score.

The verifier (``recoverlib train --head verifier``) predicts the metric score a candidate prompt gets against
the row's unknown truth. Three modes, all over mbr's candidates (:func:`recoverlib.combine.mbr.candidates`):

- ``rerank``: pick the candidate maximising ``(1 - weight) * mbr's expected score + weight * verifier``;
- ``drop``: keep the samples whose text the verifier scores in the top ``keep`` fraction of the row's distinct
  texts (at least one), then run mbr on what is left;
- ``weight``: mbr with each sample weighted by the verifier's score (a softmax at ``temperature``), so an
  implausible sample counts less as evidence of the answer.

The judge may also be an embedding head (``recoverlib train --head embedding``): a text's score is then its
metric score against the predicted embedding, the same quantity estimated another way, so ``drop`` and
``weight`` gate the samples by the predicted target.

Needs the rows' pairs in the context (``CombineContext.pairs``: ``tune``/``combine --rows CSV``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from recoverlib.combine.base import Draft, Sample, Strategy, distinct_texts
from recoverlib.combine.mbr import MbrConfig, candidates, expected_scores
from recoverlib.errors import RecoverlibError
from recoverlib.heads.cache import judge_many, judged_scores

MODES = ("rerank", "drop", "weight")


@dataclass(frozen=True)
class VerifierConfig:
    """``path``: the verifier head folder (or an embedding head's: see the module docstring); ``mode``:
    rerank, drop or weight; ``weight`` in [0, 1] (rerank: the verifier's share against mbr's expected score);
    ``keep`` in (0, 1] (drop: fraction of distinct texts kept); ``temperature`` > 0 (weight: softmax
    temperature of the scores); ``max_parts``: mbr's."""

    strategy: ClassVar[str] = "verifier"  # its name in JSON configs and the registry

    path: str = ""
    mode: str = "rerank"
    weight: float = 1.0
    keep: float = 0.5
    temperature: float = 0.05
    max_parts: int = 4

    def __post_init__(self):
        if not self.path:
            raise RecoverlibError("verifier: path (a head folder from `train --head verifier`) is required")
        if self.mode not in MODES:
            raise RecoverlibError(f"verifier: mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        if not 0.0 <= self.weight <= 1.0 or not 0.0 < self.keep <= 1.0 or self.temperature <= 0:
            raise RecoverlibError(
                f"verifier: need weight in [0, 1], keep in (0, 1], temperature > 0 (got "
                f"{self.weight}, {self.keep}, {self.temperature})"
            )

    @property
    def mbr(self) -> MbrConfig:
        return MbrConfig(max_parts=self.max_parts)


def _key(text: str) -> str:
    return " ".join(text.lower().split())  # as distinct_texts compares texts


def kept_samples(samples: Sequence[Sample], scores: Mapping[str, float], keep: float) -> list[Sample]:
    """The samples whose text is among the best ``keep`` fraction of distinct texts by score (texts compared
    as :func:`~recoverlib.combine.base.distinct_texts` does: case and spacing ignored)."""
    texts = sorted(scores, key=lambda t: -scores[t])
    chosen = {_key(t) for t in texts[: max(1, int(np.ceil(keep * len(texts))))]}
    return [s for s in samples if _key(s.text) in chosen]


def weighted_expected(
    drafts: Sequence[Draft], samples: Sequence[Sample], weights: np.ndarray, ctx
) -> np.ndarray:
    """mbr's expected score with sample ``i`` weighted by ``weights[i]`` (a draft that is a sample is scored
    without its own copy, as mbr's leave-one-out)."""
    targets = [s.text.strip() for s in samples]
    sharp = ctx.sharp(ctx.embed([d.text for d in drafts]), ctx.embed(targets))
    w = np.broadcast_to(weights, sharp.shape).copy()
    if len(targets) > 1:
        for i, d in enumerate(drafts):
            if d.text in targets:
                w[i, targets.index(d.text)] = 0.0
    return (sharp * w).sum(axis=1) / np.clip(w.sum(axis=1), 1e-12, None)


def _texts(config: VerifierConfig, samples: Sequence[Sample], ctx) -> list[str]:
    if config.mode == "rerank":
        return [d.text for d in candidates(config.mbr, samples, ctx)]
    if config.mode == "drop":
        return distinct_texts(samples)
    return [s.text.strip() for s in samples if s.text.strip()]


def _prefetch(config: VerifierConfig, samples: Sequence[Sample], ctx) -> list[str]:
    return [d.text for d in candidates(config.mbr, samples, ctx)]


def _prepare(config: VerifierConfig, rows: Mapping[str, Sequence[Sample]], ctx) -> None:
    judge_many(
        ctx, config.path, [(rid, t) for rid, samples in rows.items() for t in _texts(config, samples, ctx)]
    )


def _verifier(config: VerifierConfig, samples: Sequence[Sample], ctx, draft) -> Draft:
    usable = [s for s in samples if s.text.strip()]
    if not usable:
        return Draft()
    if config.mode == "drop":
        texts = distinct_texts(usable)
        scores = dict(zip(texts, judged_scores(ctx, config.path, ctx.row, texts), strict=True))
        usable = kept_samples(usable, scores, config.keep)
    drafts = candidates(config.mbr, usable, ctx)
    if config.mode == "drop":
        return drafts[int(np.argmax(expected_scores(config.mbr, drafts, usable, ctx)))]
    if config.mode == "weight":
        own = judged_scores(ctx, config.path, ctx.row, [s.text.strip() for s in usable])
        weights = np.exp((own - own.max()) / config.temperature)
        return drafts[int(np.argmax(weighted_expected(drafts, usable, weights, ctx)))]
    judged = judged_scores(ctx, config.path, ctx.row, [d.text for d in drafts])
    mixed = (1 - config.weight) * expected_scores(config.mbr, drafts, usable, ctx) + config.weight * judged
    return drafts[int(np.argmax(mixed))]


STRATEGY = Strategy(VerifierConfig, _verifier, embeds=True, prefetch=_prefetch, prepare=_prepare)
