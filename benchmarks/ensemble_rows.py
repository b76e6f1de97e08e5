"""The rows of the ensemble-quality table: which of a level's generated samples each row uses, how they are
joined (recoverlib's combine strategies), and its score with bootstrap intervals, tokens and time.

Every row is computed from one generation pass per level (greedy per adapter and base, ``n`` seeded samples
per adapter), so rows differ only in which samples they keep and how they join them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recoverlib.combine import ConcatConfig, MeanPromptConfig, PipelineConfig, Sample, combine_rows
from recoverlib.combine.tune import bootstrap_interval
from recoverlib.metric import sharpened_cosine
from recoverlib.pipeline import DEFAULT_FALLBACK

GREEDY, SAMPLED = "greedy", "sampled"


@dataclass(frozen=True)
class Generated:
    """One split's generation: ``kind -> id -> samples``, plus seconds and generated tokens per pass."""

    samples: Mapping[str, Mapping[str, tuple[Sample, ...]]]
    seconds: Mapping[str, float]
    tokens: Mapping[tuple, int]  # (kind, id, adapter, index) -> generated tokens (prediction + eos)

    def pass_tokens(self, kind: str) -> int:
        return sum(n for key, n in self.tokens.items() if key[0] == kind)


@dataclass(frozen=True)
class Spec:
    """A table row: ``sources`` are (adapter, kind, how many) picks from a row's samples; ``config`` joins
    them."""

    name: str
    group: str
    sources: tuple[tuple[str | None, str, int], ...]
    config: object


def table_specs(adapters: Sequence[str], counts: Sequence[int], constant: str) -> list[Spec]:
    """Constant prompt; base and each adapter greedy; the first adapter's n samples; all adapters (greedy, n
    samples); each of those again with the constant prompt appended (the library's mean-prompt step)."""
    join, first = ConcatConfig(), adapters[0]
    plain = [Spec("base greedy", "single", ((None, GREEDY, 1),), join)]
    plain += [Spec(f"{a} greedy", "single", ((a, GREEDY, 1),), join) for a in adapters]
    plain += [Spec(f"{first} x{n} sampled, concat", "samples", ((first, SAMPLED, n),), join) for n in counts]
    plain.append(
        Spec("all adapters greedy, concat", "adapters", tuple((a, GREEDY, 1) for a in adapters), join)
    )
    plain += [Spec(f"all adapters x{n} sampled, concat", "adapters+samples",
                   tuple((a, SAMPLED, n) for a in adapters), join) for n in counts]
    mean = MeanPromptConfig(text=constant)
    with_mean = [
        Spec(f"{s.name} + constant", s.group + "+constant", s.sources, PipelineConfig((s.config, mean)))
        for s in plain
    ]
    return [Spec("constant prompt", "constant", (), mean), *plain, *with_mean]


def baseline_name(adapters: Sequence[str]) -> str:
    """The single greedy adapter every row is compared with (the first adapter: ``first`` in combination)."""
    return f"{adapters[0]} greedy"


def chosen(gen: Generated, kind: str, row_id: str, adapter: str | None, n: int) -> list[Sample]:
    """The first ``n`` samples (index order) of one adapter and pass for a row."""
    own = sorted((s for s in gen.samples[kind][row_id] if s.adapter == adapter), key=lambda s: s.index)
    return own[:n]


def pick(gen: Generated, spec: Spec, ids: Sequence[str]) -> dict[str, tuple[Sample, ...]]:
    """``id -> the samples spec uses``, each source's first ``n`` samples in index order."""
    return {i: tuple(s for a, kind, n in spec.sources for s in chosen(gen, kind, i, a, n)) for i in ids}


def spend(gen: Generated, spec: Spec, ids: Sequence[str]) -> tuple[float, float]:
    """(generated tokens per row, generation seconds): each pass's time shared out by the tokens used."""
    used = {kind: 0 for _, kind, _ in spec.sources}
    for i in ids:
        for a, kind, n in spec.sources:
            used[kind] += sum(gen.tokens[(kind, i, a, s.index)] for s in chosen(gen, kind, i, a, n))
    seconds = sum(gen.seconds[k] * used[k] / max(1, gen.pass_tokens(k)) for k in used)
    return sum(used.values()) / max(1, len(ids)), seconds


def row_scores(texts: Sequence[str], gold: np.ndarray, ctx) -> np.ndarray:
    """(rows,) cos^3 (sign kept) of each prediction with its truth; an empty one gets the fallback prompt."""
    filled = [t.strip() or DEFAULT_FALLBACK for t in texts]
    return sharpened_cosine(ctx.embed(filled), gold, ctx.power)


def score_table(gen: Generated, truth: Mapping[str, str], specs: Sequence[Spec], base: str, ctx,
                rng: np.random.Generator, n_boot: int) -> list[dict]:
    """One dict per spec: score [95% CI], paired difference vs ``base`` [95% CI], tokens per row, seconds."""
    ids = list(gen.samples[GREEDY])
    gold = ctx.embed([truth[i] for i in ids])
    scored = {}
    for spec in specs:
        start = time.perf_counter()
        picked = pick(gen, spec, ids)
        preds = combine_rows(picked, spec.config, ctx, progress=False)
        got = row_scores([preds[i] for i in ids], gold, ctx)
        tokens, gen_seconds = spend(gen, spec, ids)
        scored[spec.name] = (spec, got, tokens, gen_seconds + time.perf_counter() - start)
    ref = scored[base][1]
    rows = []
    for spec, got, tokens, seconds in scored.values():
        low, high = bootstrap_interval(got, rng, n_boot)
        d_low, d_high = bootstrap_interval(got - ref, rng, n_boot)
        rows.append({"strategy": spec.name, "group": spec.group, "score": float(got.mean()), "low": low,
                     "high": high, "vs_greedy": float((got - ref).mean()), "vs_low": d_low, "vs_high": d_high,
                     "tokens_per_row": tokens, "seconds": seconds})
    return rows
