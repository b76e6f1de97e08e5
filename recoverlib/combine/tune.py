"""Choosing the combination by the metric on validation rows: score every candidate strategy and pipeline on
saved samples against their truths, with bootstrap intervals and paired differences against the single first
(greedy) prediction, and keep the best as a combination config.

The choice is per task (is hedging worth it here?) and, through ``mbr``, per row. A tuned config holds no row
ids and its prompt texts inline, so it carries to another split of the same task.

A tune that writes ``out`` keeps ``<out>.partial.jsonl`` while it runs: one line per scored candidate (its
config and per-row scores), fsynced. Killed and rerun with the same inputs, it scores only the candidates not
there yet and writes the same bytes (the bootstrap draws come after all scoring, in candidate order); other
inputs are refused in one line. The partial file is removed once ``out`` is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recoverlib.combine.base import Sample, combine_rows
from recoverlib.combine.budget import BudgetConfig
from recoverlib.combine.concat import ConcatConfig
from recoverlib.combine.configio import config_to_dict, save_combination
from recoverlib.combine.embedding import EmbeddingConfig
from recoverlib.combine.embedding_search import EmbeddingSearchConfig
from recoverlib.combine.first import FirstConfig
from recoverlib.combine.mbr import MbrConfig
from recoverlib.combine.mean_prompt import MeanPromptConfig
from recoverlib.combine.medoid import MedoidConfig
from recoverlib.combine.pipeline import PipelineConfig
from recoverlib.combine.suffix import SuffixConfig
from recoverlib.combine.verifier import VerifierConfig
from recoverlib.errors import RecoverlibError
from recoverlib.metric import sharpen

BASELINE = "first"


@dataclass(frozen=True)
class Candidate:
    """A named combination config to try."""

    name: str
    config: object


def head_candidates(verifier: str | None = None, embedding: str | None = None) -> list[Candidate]:
    """Strategies with a learned head (folders): the verifier reranking mbr's candidates alone and mixed half
    and half with mbr, dropping its lower half, weighting the samples; the embedding head reranking alone and
    mixed, gating the samples by it as the verifier does (drop, weight), and searching words toward its
    prediction from the mixed pick (mixed: the search costs about a second a row, and alone it chases the
    prediction's errors)."""
    out = []
    if verifier:
        out += [Candidate("verifier-rerank", VerifierConfig(path=verifier)),
                Candidate("verifier-mix", VerifierConfig(path=verifier, weight=0.5)),
                Candidate("verifier-drop", VerifierConfig(path=verifier, mode="drop")),
                Candidate("verifier-weight", VerifierConfig(path=verifier, mode="weight"))]
    if embedding:
        out += [Candidate("embedding-rerank", EmbeddingConfig(path=embedding)),
                Candidate("embedding-mix", EmbeddingConfig(path=embedding, weight=0.5)),
                Candidate("embedding-drop", VerifierConfig(path=embedding, mode="drop")),
                Candidate("embedding-weight", VerifierConfig(path=embedding, mode="weight")),
                Candidate("embedding-search-mix", EmbeddingSearchConfig(path=embedding, weight=0.5))]
    return out


def default_candidates(mean_prompt: str | None = None, suffix: str | None = None, verifier: str | None = None,
                       embedding: str | None = None) -> list[Candidate]:
    """The standard grid: selectors alone, then with the mean prompt and the suffix when given (texts), then
    the strategies of the learned heads when given (folders)."""
    budget = BudgetConfig()
    dedup = ConcatConfig(dedup_threshold=0.9)
    out = [Candidate(BASELINE, FirstConfig()), Candidate("medoid", MedoidConfig()),
           Candidate("concat", ConcatConfig()), Candidate("concat-dedup", PipelineConfig((dedup, budget))),
           Candidate("mbr-2", MbrConfig(max_parts=2)), Candidate("mbr-4", MbrConfig(max_parts=4))]
    if mean_prompt:
        append, insert = MeanPromptConfig(text=mean_prompt), MeanPromptConfig(text=mean_prompt, mode="insert")
        out += [
            Candidate("concat-dedup+mean", PipelineConfig((dedup, append, budget))),
            Candidate("concat-dedup+mean-insert", PipelineConfig((dedup, insert, budget))),
            Candidate("mbr-4+mean?", PipelineConfig((MbrConfig(mean_prompt=append), budget))),
            Candidate(
                "mbr-4+mean?-prior",
                PipelineConfig((MbrConfig(mean_prompt=append, prior_weight=0.25), budget)),
            ),
        ]
    if suffix:
        tail = SuffixConfig(text=suffix)
        out += [Candidate("concat-dedup+suffix", PipelineConfig((dedup, tail, budget))),
                Candidate("mbr-4+suffix", PipelineConfig((MbrConfig(), tail, budget)))]
        if mean_prompt:
            out.append(
                Candidate("mbr-4+mean?+suffix", PipelineConfig((MbrConfig(mean_prompt=append), tail, budget)))
            )
    return out + head_candidates(verifier, embedding)


def select(candidates: Sequence[Candidate], names: Sequence[str] | None) -> list[Candidate]:
    """The candidates named (in grid order; the baseline always kept); unknown names are a one-line error."""
    if not names:
        return list(candidates)
    known = {c.name for c in candidates}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise RecoverlibError(
            f"unknown strategy name(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return [c for c in candidates if c.name in set(names) | {BASELINE}]


def bootstrap_interval(values: np.ndarray, rng: np.random.Generator, n_boot: int = 1000,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (rows,); ``rng`` is the caller's seeded
    generator."""
    if len(values) == 0:
        return float("nan"), float("nan")
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


@dataclass(frozen=True)
class Result:
    """One candidate's score on the rows: mean, 95% interval, paired difference vs the baseline with interval.

    ``seconds``: this candidate's wall time, including embedding the texts no earlier candidate needed (the
    cache is shared, so the first embedding strategy pays for the samples).
    """

    name: str
    config: object
    score: float
    low: float
    high: float
    diff: float
    diff_low: float
    diff_high: float
    seconds: float
    rows: np.ndarray  # (rows,) per-row scores


class TuneProgress:
    """The candidates a killed tune already scored (``<out>.partial.jsonl``), for a rerun to skip.

    The first line holds a digest of what the scores depend on (rows, samples, truths, embedder, power,
    fallback); each further line one candidate: ``{"name", "config", "scores", "seconds"}``. A torn last line
    is dropped.
    """

    def __init__(self, path: str | Path, digest: str):
        self.path, self.digest = Path(path), digest
        self.done: dict[str, tuple[dict, np.ndarray, float]] = {}
        lines = self.path.read_text().splitlines(keepends=True) if self.path.is_file() else []
        whole = [ln for ln in lines if ln.endswith("\n")]
        try:
            if whole and json.loads(whole[0]).get("digest") != digest:
                raise RecoverlibError(
                    f"{self.path} is a partial tune of other samples, truths or embedder: delete"
                    " it, or rerun with the inputs it was started with"
                )
            for line in whole[1:]:
                rec = json.loads(line)
                self.done[rec["name"]] = (
                    rec["config"],
                    np.array(rec["scores"], dtype=np.float64),
                    rec["seconds"],
                )
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise RecoverlibError(
                f"{self.path}: not a partial tune ({type(err).__name__}: {err}); delete it"
            ) from None
        # written with the first new line
        self._head = "".join(whole) or json.dumps({"digest": digest}) + "\n"

    def get(self, cand: Candidate) -> tuple[np.ndarray, float] | None:
        got = self.done.get(cand.name)
        same = got is not None and got[0] == json.loads(json.dumps(config_to_dict(cand.config)))
        return (got[1], got[2]) if same else None

    def add(self, cand: Candidate, scores: np.ndarray, seconds: float) -> None:
        line = json.dumps({"name": cand.name, "config": config_to_dict(cand.config),
                           "scores": scores.tolist(), "seconds": seconds}) + "\n"
        # nothing is written before a candidate is scored (a bad input leaves no file)
        if self._head is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # rewritten without a torn tail (a kill mid-line): appends stay whole
            self._write(self._head, "w")
            self._head = None
        self._write(line, "a")

    def _write(self, text: str, mode: str) -> None:
        with open(self.path, mode) as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def inputs_digest(samples: Mapping[str, Sequence[Sample]], truth: Mapping[str, str], ids: Sequence[str],
                  embedder: str, power: int, fallback: str | None) -> str:
    """A digest of everything a candidate's per-row scores depend on, besides its config."""
    data = [[i, [[s.adapter, s.index, s.text, s.base] for s in samples[i]], truth[i]] for i in ids]
    raw = json.dumps({"rows": data, "embedder": embedder, "power": power, "fallback": fallback})
    return hashlib.sha256(raw.encode()).hexdigest()


def score_candidates(samples: Mapping[str, Sequence[Sample]], truth: Mapping[str, str],
                     candidates: Sequence[Candidate], ctx, rng: np.random.Generator, n_boot: int = 1000,
                     fallback: str | None = None, progress: bool = True,
                     partial: str | Path | None = None) -> list[Result]:
    """Every candidate scored on the rows both files have, best first. Empty predictions get ``fallback``
    (as ``predict`` does). The baseline (``first``) is always scored: the paired differences need it.
    ``partial``: a :class:`TuneProgress` file; candidates scored there are not scored again."""
    ids = matched_ids(samples, truth)
    rows = {i: samples[i] for i in ids}
    saved = None
    if partial is not None:
        saved = TuneProgress(
            partial, inputs_digest(samples, truth, ids, ctx.embedder_name, ctx.power, fallback)
        )
    if BASELINE not in {c.name for c in candidates}:
        candidates = [Candidate(BASELINE, FirstConfig()), *candidates]
    scored, gold = {}, None
    for cand in candidates:
        if saved is not None and (got := saved.get(cand)) is not None:
            scored[cand.name] = (cand, *got)
            continue
        start = time.perf_counter()
        gold = ctx.embed([truth[i] for i in ids]) if gold is None else gold
        preds = combine_rows(rows, cand.config, ctx, progress=progress)
        texts = [preds[i] or fallback or "" for i in ids]
        got = _row_scores(texts, gold, ctx).astype(np.float64)  # as a resumed run reads it back
        scored[cand.name] = (cand, got, time.perf_counter() - start)
        if saved is not None:
            saved.add(cand, got, scored[cand.name][2])
    base = scored[BASELINE][1]
    out = []
    for cand, got, secs in scored.values():
        # One seeded draw per candidate, from the caller's generator: a rerun with the same seed repeats
        # exactly.
        low, high = bootstrap_interval(got, rng, n_boot)
        d_low, d_high = bootstrap_interval(got - base, rng, n_boot)
        out.append(Result(cand.name, cand.config, float(got.mean()), low, high, float((got - base).mean()),
                          d_low, d_high, secs, got))
    return sorted(out, key=lambda r: -r.score)


def _row_scores(texts: list[str], gold: np.ndarray, ctx) -> np.ndarray:
    """(rows,) cos^3 of each prediction with its truth; an empty prediction scores 0."""
    nonempty = [t or " " for t in texts]
    got = sharpen(np.einsum("nd,nd->n", ctx.embed(nonempty), gold), ctx.power)
    return np.where([bool(t) for t in texts], got, 0.0)


def matched_ids(samples: Mapping[str, Sequence[Sample]], truth: Mapping[str, str]) -> list[str]:
    """Ids in both, in the samples file's order; none in common, or samples without truth, is an error."""
    missing = [i for i in samples if i not in truth]
    if missing:
        raise RecoverlibError(f"{len(missing)} sampled row(s) have no truth, e.g. id {missing[0]}; "
                              "pass the truth CSV of the same split")
    if not samples:
        raise RecoverlibError("the samples file has no rows")
    return list(samples)


def format_table(results: Sequence[Result]) -> str:
    """A Markdown table: score [95% interval], paired difference vs the first prediction [interval],
    seconds."""
    lines = ["| strategy | score | 95% interval | vs first | 95% interval | s |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.score:.4f} | [{r.low:.4f}, {r.high:.4f}] | {r.diff:+.4f} | "
                     f"[{r.diff_low:+.4f}, {r.diff_high:+.4f}] | {r.seconds:.1f} |")
    return "\n".join(lines)


def tune(samples: Mapping[str, Sequence[Sample]], truth: Mapping[str, str], ctx, *,
         strategies: Sequence[str] | None = None, mean_prompt: str | None = None, suffix: str | None = None,
         verifier: str | None = None, embedding: str | None = None, extra: Sequence[Candidate] = (),
         n_boot: int = 1000, seed: int = 0,
         fallback: str | None = None, out: str | None = None, tuned_on: str = "") -> list[Result]:
    """``recoverlib tune``: score the grid (``strategies`` of it, plus ``extra`` candidates) on rows with
    known truths, best first; with ``out``, write the best as a combination file (its info holds the whole
    table). ``verifier`` / ``embedding``: head folders; their strategies join the grid (``ctx.pairs`` must
    hold the rows' texts)."""

    grid = default_candidates(mean_prompt, suffix, verifier, embedding)
    candidates = select(grid, strategies) + list(extra)
    partial = None if out is None else Path(f"{out}.partial.jsonl")
    results = score_candidates(samples, truth, candidates, ctx, np.random.default_rng(seed), n_boot, fallback,
                               partial=partial)
    if out is not None:
        best = results[0]
        info = {"tuned_on": tuned_on, "rows": len(results[0].rows), "embedder": ctx.embedder_name,
                "name": best.name, "score": round(best.score, 5), "vs_first": round(best.diff, 5),
                "table": {r.name: round(r.score, 5) for r in results}}
        save_combination(best.config, out, info)
        partial.unlink(missing_ok=True)
    return results
