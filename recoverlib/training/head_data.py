"""Training examples for the learned heads, made from the model's own samples on rows with known prompts.

A verifier example is a (pair, candidate prompt, metric score) triple: every candidate a combination strategy
chooses among (each distinct sample and mbr's concatenations, :func:`recoverlib.combine.mbr.candidates`),
scored against the row's truth under the metric's embedder. An embedding example is a pair and the embedding
of its truth under the embedder itself (no geometry mode: a strategy applies the mode to the prediction).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recoverlib.combine.mbr import MbrConfig, candidates
from recoverlib.errors import RecoverlibError
from recoverlib.io import Sample
from recoverlib.metric import sharpen


@dataclass(frozen=True)
class HeadExample:
    """One training example: the row's pair, the candidate (verifier; None for the embedding head) and the
    target (a score, or an embedding)."""

    row: str
    original: str
    rewritten: str
    candidate: str | None
    target: tuple[float, ...]


def verifier_examples(
    rows: Sequence, samples: Mapping[str, Sequence[Sample]], ctx, max_parts: int = 4
) -> list[HeadExample]:
    """(pair, candidate, score) triples for rows (with ``id, original_text, rewritten_text, rewrite_prompt``)
    that have samples; ``ctx``: the :class:`~recoverlib.combine.CombineContext` of the metric's embedder."""
    have = [r for r in rows if samples.get(r.id)]
    if not have:
        raise RecoverlibError(
            "no row of the training CSV has samples: pass the samples file of the same "
            "rows (predict --samples-file on the training CSV)"
        )
    config = MbrConfig(max_parts=max_parts)
    texts = {r.id: [d.text for d in candidates(config, samples[r.id], ctx)] for r in have}
    ctx.prefetch([t for got in texts.values() for t in got] + [r.rewrite_prompt for r in have])
    out = []
    for r in have:
        got = [t for t in texts[r.id] if t.strip()]
        if not got:
            continue
        cos = ctx.embed(got) @ ctx.embed([r.rewrite_prompt])[0]
        scores = sharpen(cos, ctx.power)
        out += [
            HeadExample(r.id, r.original_text, r.rewritten_text, t, (float(s),))
            for t, s in zip(got, scores, strict=True)
        ]
    return out


def embedding_examples(rows: Sequence, scorer) -> list[HeadExample]:
    """(pair, truth embedding) examples; ``scorer``: a :class:`~recoverlib.metric.Scorer` (its embedder's
    own encoding is the target, unit length)."""
    if not rows:
        raise RecoverlibError("no training rows for the embedding head")
    emb = scorer.encode([r.rewrite_prompt for r in rows])
    emb = emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)
    return [
        HeadExample(r.id, r.original_text, r.rewritten_text, None, tuple(map(float, e)))
        for r, e in zip(rows, emb, strict=True)
    ]
