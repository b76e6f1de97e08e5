"""Combination strategies: a config dataclass per strategy, a handler registered by that config's type.

A row's samples (every adapter, every sampled prediction, already cleaned) go in; one prompt comes out.
The combiner never sees models or CSVs; strategies that need embeddings get them from a
:class:`~recoverlib.combine.context.CombineContext`.

A handler is ``handler(config, samples, ctx, draft) -> Draft | str``: ``draft`` is the result of the previous
pipeline step (None for a first step or a lone strategy). A *selector* (concat, medoid, mbr, first) ignores it
and builds a draft from the samples; a *transform* (mean-prompt, suffix, budget) edits it, starting from the
default draft (:func:`default_draft`) when there is none. Drafts keep their parts apart, so a later step knows
which part is a prediction, the mean prompt or the suffix (the budget drops predictions before fixed parts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from recoverlib.combine.context import CombineContext
from recoverlib.errors import RecoverlibError
from recoverlib.io import Sample
from recoverlib.registry import Registry

PREDICTION, MEAN, SUFFIX = "prediction", "mean", "suffix"


@dataclass(frozen=True)
class Part:
    """One piece of a combined prompt; ``kind`` is ``"prediction"``, ``"mean"`` or ``"suffix"``."""

    text: str
    kind: str = PREDICTION


@dataclass(frozen=True)
class Draft:
    """A combined prompt still split into parts; ``text`` joins the non-empty parts with ``separator``."""

    parts: tuple[Part, ...] = ()
    separator: str = " "

    @property
    def text(self) -> str:
        return self.separator.join(p.text.strip() for p in self.parts if p.text.strip())

    def predictions(self) -> list[str]:
        return [p.text for p in self.parts if p.kind == PREDICTION]

    def replace(self, parts: Sequence[Part]) -> Draft:
        return Draft(tuple(parts), self.separator)


@dataclass(frozen=True)
class Strategy:
    """A strategy: the config type it serves (its ``strategy`` class attribute is the strategy's name in JSON
    configs and in :data:`STRATEGIES`), its handler, whether it embeds, and an optional prefetch hook.

    ``prefetch(config, samples, ctx) -> texts`` names texts the handler will embed for a row, so
    :func:`combine_rows` can embed them for every row in one batch before the per-row loop. ``prepare(config,
    rows, ctx)`` does a strategy's own batch work across rows (``id -> samples``) once, before that loop (a
    learned head scores every row's candidates in one pass); the handler finds its row as ``ctx.row``. A
    strategy module defines one as ``STRATEGY``.
    """

    config_type: type
    handler: Callable
    embeds: bool = False
    prefetch: Callable | None = field(default=None, compare=False)
    prepare: Callable | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return self.config_type.strategy


# One file per strategy, found through one registry (entry point group ``recoverlib.strategies``).
STRATEGIES = Registry("combination strategy", "recoverlib.strategies", {
    name: f"recoverlib.combine.{module}:STRATEGY" for name, module in (
        ("concat", "concat"), ("first", "first"), ("medoid", "medoid"), ("mbr", "mbr"),
        ("mean-prompt", "mean_prompt"), ("suffix", "suffix"), ("budget", "budget"), ("pipeline", "pipeline"),
        ("verifier", "verifier"), ("embedding", "embedding"),
        ("embedding-search", "embedding_search"))
})


def is_combination(config) -> bool:
    """Whether ``config`` is a strategy's config (a dataclass naming its ``strategy``)."""
    return isinstance(getattr(type(config), "strategy", None), str)


def strategy_for(config) -> Strategy:
    """The strategy serving ``config`` (by its type's ``strategy`` name)."""
    if not is_combination(config):
        raise RecoverlibError(f"no combination strategy for {type(config).__name__}")
    return strategy_named(type(config).strategy)


def strategy_named(name: str) -> Strategy:
    return STRATEGIES.get(name)


def strategies() -> dict[str, Strategy]:
    """Every registered strategy by JSON name."""
    return {name: STRATEGIES.get(name) for name in STRATEGIES.names()}


def sub_configs(config) -> list:
    """The configs nested in ``config`` (pipeline steps, mbr's mean prompt), depth first, ``config`` first."""
    out = [config]
    for value in getattr(config, "__dict__", {}).values():
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if is_combination(item):
                out.extend(sub_configs(item))
    return out


def needs_embeddings(config) -> bool:
    """Whether combining with ``config`` (or any step it holds) embeds texts."""
    return any(_embeds(c) for c in sub_configs(config))


def _embeds(config) -> bool:
    flag = getattr(config, "needs_embeddings", None)  # a config may embed only for some settings
    return bool(flag) if flag is not None else strategy_for(config).embeds


def apply(config, samples: Sequence[Sample], ctx, draft: Draft | None = None) -> Draft:
    """Run one strategy on one row and return its draft (a handler's plain string becomes one part)."""
    out = strategy_for(config).handler(config, samples, ctx, draft)
    return out if isinstance(out, Draft) else Draft((Part(out),) if out else ())


def combine(samples: Sequence[Sample], config, ctx=None, row: str | None = None) -> str:
    """One prompt from a row's samples, by the strategy ``config``'s type names. May return "" (no usable
    text).

    ``ctx``: a :class:`CombineContext`; needed only by strategies that embed (one with the competition's
    embedder is made on demand). ``row``: the row's id (strategies with a learned head look its pair up in
    ``ctx.pairs``). For many rows, :func:`combine_rows` embeds in batches and is much faster.
    """
    strategy_for(config)
    if ctx is None:

        ctx = CombineContext()
    if row is not None:
        return combine_rows({row: samples}, config, ctx, progress=False)[row]
    return apply(config, samples, ctx).text


def combine_rows(
    rows: Mapping[str, Sequence[Sample]], config, ctx=None, progress: bool = True
) -> dict[str, str]:
    """``id -> prompt`` for many rows: every text a strategy will embed is embedded up front, across rows."""
    from tqdm.auto import tqdm

    ctx = ctx or CombineContext()
    if needs_embeddings(config):
        ctx.prefetch(s.text for samples in rows.values() for s in samples)
        for sub in sub_configs(config):
            hook = strategy_for(sub).prefetch
            if hook is not None:
                ctx.prefetch(t for samples in rows.values() for t in hook(sub, samples, ctx))
    for sub in sub_configs(config):
        if (prepare := strategy_for(sub).prepare) is not None:
            prepare(sub, rows, ctx)
    bar = tqdm(rows.items(), desc="combine", unit="row", disable=not progress or len(rows) < 100)
    return {rid: apply(config, samples, ctx.at_row(rid)).text for rid, samples in bar}


def round_robin(samples: Sequence[Sample]) -> list[Sample]:
    """Samples ordered index-major across adapters (a0 b0 a1 b1 ...), so early text covers every adapter."""
    sources = list(dict.fromkeys((s.base, s.adapter) for s in samples))
    return sorted(samples, key=lambda s: (s.index, sources.index((s.base, s.adapter))))


def unique_texts(texts: Iterable[str]) -> list[str]:
    """Non-empty texts, stripped, in the given order; exact duplicates (case and spacing ignored) dropped."""
    seen, out = set(), []
    for text in texts:
        key = " ".join(text.lower().split())
        if key and key not in seen:
            seen.add(key)
            out.append(text.strip())
    return out


def distinct_texts(samples: Sequence[Sample]) -> list[str]:
    """Non-empty sample texts in round-robin order, exact duplicates (case and spacing ignored) dropped."""
    return unique_texts(s.text for s in round_robin(samples))


def default_draft(samples: Sequence[Sample]) -> Draft:
    """What a transform starts from when it is first: the distinct predictions, round robin (v1's concat)."""
    return Draft(tuple(Part(t) for t in distinct_texts(samples)))
