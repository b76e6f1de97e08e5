"""Searching strings the metric likes: the mean prompt (``optimize-prompt``) and the suffix
(``search-suffix``).

Both are a beam search that appends one word (or embedder token) per step and keeps the ``beam`` best strings
seen so far, so the best train score never decreases from step to step; it stops early when no step helps.
Everything is seeded (vocabulary sample, validation split, screening rows) and the embedder is deterministic
on CPU, so a run repeats for a seed.

Screening (``screen``): the suffix's objective embeds rows x candidates texts per step, too many for the whole
vocabulary on a CPU; with ``screen=k`` every candidate is first scored on ``k`` seeded rows only, and the best
``shortlist`` of them on all rows (an approximation: a candidate the screen ranks low is never tried in full).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from recoverlib.errors import RecoverlibError
from recoverlib.metric import sharpen


@dataclass(frozen=True)
class SearchConfig:
    """``steps``: words appended at most; ``beam``: strings kept per step (1 = greedy); ``vocab_size``: words
    tried per step, ``None`` for all of them (the whole vocabulary, every step: the 2nd place's search);
    ``vocab``: ``words`` (from the train prompts, most frequent first) or ``tokens`` (a seeded sample of the
    embedder's whole-word tokens, or all of them)."""

    steps: int = 16
    beam: int = 1
    vocab_size: int | None = 200
    vocab: str = "words"
    seed: int = 0
    screen: int | None = None  # rows that rank every candidate first (None: every candidate on every row)
    shortlist: int = 256  # candidates of the screen scored on every row

    def __post_init__(self):
        for name in ("steps", "beam", "vocab_size", "screen", "shortlist"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise RecoverlibError(f"search: {name} must be >= 1 (got {getattr(self, name)})")
        if self.vocab not in ("words", "tokens"):
            raise RecoverlibError(f"search: vocab must be 'words' or 'tokens' (got {self.vocab!r})")


@dataclass
class SearchResult:
    """The best string, its train score, and the best train score after each step (non-decreasing)."""

    text: str
    score: float
    history: list[float] = field(default_factory=list)


def word_vocabulary(texts: Sequence[str], size: int | None) -> list[str]:
    """The ``size`` most frequent words of ``texts`` (all with None; lower case, no punctuation), ties by
    first use."""
    counts = Counter(w for t in texts for w in re.findall(r"[A-Za-z][A-Za-z'-]*", t.lower()))
    return [w for w, _ in counts.most_common(size)]


def token_vocabulary(tokenizer, size: int | None, rng: np.random.Generator) -> list[str]:
    """A seeded sample of ``size`` of the tokenizer's whole-word alphabetic tokens (3+ letters, markers
    stripped), or all of them (sorted) with ``size=None``."""
    words = set()
    for tok in tokenizer.get_vocab():
        if tok.startswith("##"):
            continue  # a WordPiece continuation is not a word on its own
        word = tok.lstrip("▁Ġ")
        if len(word) >= 3 and word.isascii() and word.isalpha():
            words.add(word)
    pool = sorted(words)
    if not pool:
        raise RecoverlibError("search: the embedder's tokenizer has no whole-word tokens to try")
    if size is None or size >= len(pool):
        return pool
    return [pool[i] for i in sorted(rng.choice(len(pool), size=min(size, len(pool)), replace=False))]


def beam_search(score: Callable[[list[str]], np.ndarray], vocab: Sequence[str], config: SearchConfig,
                start: str = "", desc: str = "search", progress: bool = True,
                screen: Callable[[list[str]], np.ndarray] | None = None) -> SearchResult:
    """Append-one-word beam search maximising ``score(strings) -> (len(strings),)`` (higher is better).

    ``screen``: a cheaper approximation of ``score``; each step keeps its best ``config.shortlist`` candidates
    and scores only those with ``score``."""
    if not vocab:
        raise RecoverlibError("search: the vocabulary is empty")
    beam = [(float(score([start])[0]) if start else -np.inf, start)]
    history: list[float] = []
    bar = tqdm(range(config.steps), desc=desc, unit="step", disable=not progress)
    for _ in bar:
        texts = list(dict.fromkeys(f"{s} {w}".strip() for _, s in beam for w in vocab))
        if screen is not None and len(texts) > config.shortlist:
            ranked = np.argsort(-screen(texts), kind="stable")[: config.shortlist]
            texts = [texts[i] for i in sorted(ranked)]
        new = list(zip(score(texts).tolist(), texts, strict=True))
        # Old strings stay in the pool: the best score cannot fall, and a step that finds nothing better ends
        # it.
        pool = sorted(dict((t, s) for s, t in [*beam, *new]).items(), key=lambda kv: (-kv[1], kv[0]))
        improved = pool[0][1] > beam[0][0]
        beam = [(s, t) for t, s in pool[: config.beam]]
        history.append(beam[0][0])
        bar.set_postfix(score=f"{beam[0][0]:.4f}")
        if not improved:
            break
    bar.close()
    return SearchResult(beam[0][1], beam[0][0], history)


def prompt_scorer(targets: Sequence[str], ctx) -> Callable[[list[str]], np.ndarray]:
    """``score(candidates)``: each candidate's mean cos^3 against every target (the mean prompt's
    objective)."""
    goal = ctx.embed(list(targets))

    def score(texts: list[str]) -> np.ndarray:
        return ctx.sharp(ctx.embed(texts, remember=False), goal).mean(axis=1)

    return score


def optimize_prompt(train: Sequence[str], ctx, config: SearchConfig = SearchConfig(),
                    progress: bool = True) -> SearchResult:
    """The mean prompt: the string with the highest mean score against the ``train`` prompts."""
    if not train:
        raise RecoverlibError("optimize-prompt: no train prompts")
    rng = np.random.default_rng(config.seed)
    vocab = (word_vocabulary(train, config.vocab_size) if config.vocab == "words"
             else token_vocabulary(ctx.get_scorer().tokenizer, config.vocab_size, rng))
    screen = _screen_rows(len(train), config, rng)
    return beam_search(prompt_scorer(train, ctx), vocab, config, desc="optimize-prompt", progress=progress,
                       screen=None if screen is None else prompt_scorer([train[i] for i in screen], ctx))


def _screen_rows(n: int, config: SearchConfig, rng: np.random.Generator) -> np.ndarray | None:
    """Seeded indices of the ``config.screen`` rows that rank candidates (None: no screening, or too few
    rows)."""
    if config.screen is None or config.screen >= n:
        return None
    return np.sort(rng.choice(n, size=config.screen, replace=False))


def suffix_scorer(
    predictions: Sequence[str], truths: Sequence[str], ctx
) -> Callable[[list[str]], np.ndarray]:
    """``score(suffixes)``: mean cos^3 of ``prediction + " " + suffix`` against its truth, over rows."""
    goal = ctx.embed(list(truths))

    def score(suffixes: list[str]) -> np.ndarray:
        texts = [f"{p} {s}".strip() for s in suffixes for p in predictions]
        emb = ctx.embed(texts, remember=False).reshape(len(suffixes), len(predictions), -1)
        return sharpen(np.einsum("snd,nd->sn", emb, goal), ctx.power).mean(axis=1)

    return score


def search_suffix(
    predictions: Sequence[str],
    truths: Sequence[str],
    ctx,
    config: SearchConfig = SearchConfig(),
    progress: bool = True,
) -> SearchResult:
    """The suffix: embedder tokens whose addition to every prediction most raises its score against its
    truth."""
    if not predictions or len(predictions) != len(truths):
        raise RecoverlibError(f"search-suffix: {len(predictions)} predictions for {len(truths)} truths")
    rng = np.random.default_rng(config.seed)
    vocab = token_vocabulary(ctx.get_scorer().tokenizer, config.vocab_size, rng)
    screen = _screen_rows(len(predictions), config, rng)
    screen_score = None if screen is None else suffix_scorer([predictions[i] for i in screen],
                                                             [truths[i] for i in screen], ctx)
    return beam_search(suffix_scorer(predictions, truths, ctx), vocab, config, desc="search-suffix",
                       progress=progress, screen=screen_score)


def holdout_split(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) index arrays; validation gets ``fraction`` of ``n`` (at least 1 when n >=
    2)."""
    if not 0 <= fraction < 1:
        raise RecoverlibError(
            f"holdout must be in [0, 1) (got {fraction}): the rest is what the search learns from"
        )
    order = rng.permutation(n)
    k = max(1, round(n * fraction)) if n >= 2 else 0
    return np.sort(order[k:]), np.sort(order[:k])
