"""Which way of combining a row's samples does the metric pay for on this task, and by how much over the
single first (greedy) prediction?

The choice is tuned on a validation split (``recoverlib tune``'s grid: first, medoid, concat, near-dup concat,
mbr, and with a mean prompt / suffix when given) and then every strategy is scored on a separate test split,
with bootstrap 95% intervals of the mean and of the paired difference against ``first``. The tuned choice is
marked; if its test interval against ``first`` excludes 0, combining pays on this task.

Writes ``benchmarks/results/combination.{md,csv,png}``. Reproduce the table with::

    python -m benchmarks.combination --val-samples VAL.jsonl --val-truth VAL.csv \\
        --test-samples TEST.jsonl --test-truth TEST.csv --embedder minilm \\
        [--mean-prompt MEAN.txt] [--suffix SUFFIX.txt] [--seed 0]

(samples files from ``recoverlib predict --save-samples``; truth CSVs with ``id, rewrite_prompt``).
With ``--verifier DIR`` / ``--embedding-head DIR`` (``recoverlib train --head ...``) and ``--val-rows`` /
``--test-rows`` (the splits' input CSVs, whose texts the heads read) the heads' strategies join the grid, and
the test table says whether the head strategy tuned on validation beats the best fixed strategy on test
(paired difference with its bootstrap interval).
``--quick`` scores a small grid with 200 resamples (for tests and smoke runs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.report import pyplot, results_dir
from recoverlib.combine.context import CombineContext
from recoverlib.combine.mean_prompt import read_text_file
from recoverlib.combine.tune import (
    bootstrap_interval,
    default_candidates,
    format_table,
    head_candidates,
    score_candidates,
    select,
)
from recoverlib.errors import RecoverlibError
from recoverlib.io import read_rows, read_samples, read_truth
from recoverlib.metric import Scorer
from recoverlib.pipeline import DEFAULT_FALLBACK

QUICK = ["first", "medoid", "concat", "mbr-2"]


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for split in ("val", "test"):
        p.add_argument(f"--{split}-samples", required=True, type=Path)
        p.add_argument(f"--{split}-truth", required=True, type=Path)
    p.add_argument("--embedder", default="minilm", help="the metric's embedder (sentence-t5-base on Kaggle)")
    p.add_argument("--mean-prompt", type=Path)
    p.add_argument("--suffix", type=Path)
    p.add_argument("--strategies", nargs="+", help="grid names (default: all; --quick: a small grid)")
    p.add_argument("--verifier", type=Path, help="verifier head folder: adds its strategies")
    p.add_argument("--embedding-head", type=Path, help="embedding head folder: adds its strategies")
    p.add_argument("--val-rows", type=Path, help="validation input CSV (the heads read its texts)")
    p.add_argument("--test-rows", type=Path, help="test input CSV (the heads read its texts)")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", "--out-dir", type=Path, default=None,
                   help="results folder (default benchmarks/results; --quick: scratch)")
    args = p.parse_args(argv)
    args.out = results_dir(args.out, args.quick)
    return args


def run(args, ctx: CombineContext) -> pd.DataFrame:
    """Tune on validation, score on test; one row per strategy (test metrics, validation score, tuned
    flag)."""
    mean = read_text_file(args.mean_prompt, "--mean-prompt") if args.mean_prompt else None
    suffix = read_text_file(args.suffix, "--suffix") if args.suffix else None
    names = args.strategies or (QUICK if args.quick else None)
    heads = {k: str(v) for k, v in (("verifier", args.verifier), ("embedding", args.embedding_head)) if v}
    if heads and not (args.val_rows and args.test_rows):
        raise RecoverlibError("--verifier / --embedding-head need --val-rows and --test-rows")
    candidates = select(default_candidates(mean, suffix), names) + head_candidates(
        heads.get("verifier"), heads.get("embedding"))
    ctx.pairs = {r.id: (r.original_text, r.rewritten_text)
                 for f in (args.val_rows, args.test_rows) if f for r in read_rows(f)}
    n_boot = 200 if args.quick else args.bootstrap
    rng = np.random.default_rng(args.seed)
    splits = {s: (read_samples(getattr(args, f"{s}_samples")), read_truth(getattr(args, f"{s}_truth")))
              for s in ("val", "test")}
    val = score_candidates(*splits["val"], candidates, ctx, rng, n_boot, DEFAULT_FALLBACK, progress=False)
    test = score_candidates(*splits["test"], candidates, ctx, rng, n_boot, DEFAULT_FALLBACK, progress=False)
    val_score = {r.name: r.score for r in val}
    frame = pd.DataFrame(
        [
            {
                "strategy": r.name,
                "tuned": r.name == val[0].name,
                "val_score": val_score[r.name],
                "test_score": r.score,
                "test_low": r.low,
                "test_high": r.high,
                "vs_first": r.diff,
                "vs_first_low": r.diff_low,
                "vs_first_high": r.diff_high,
                "seconds": r.seconds,
            }
            for r in test
        ]
    )
    frame.attrs.update(
        rows={s: len(v[0]) for s, v in splits.items()}, table=format_table(test), tuned=val[0].name,
        heads=head_checks(val, test, rng, n_boot),
    )
    return frame


def is_head(name: str) -> bool:
    return name.startswith(("verifier", "embedding"))


def head_checks(val, test, rng, n_boot: int) -> dict:
    """Per head (verifier, embedding): its strategy tuned on validation vs the best fixed strategy on test
    (the best non-head score there: a strict baseline), paired difference [95% interval], and the goal
    (difference >= 0.01 with the interval above 0); seconds per row of scoring."""
    fixed = max((r for r in test if not is_head(r.name)), key=lambda r: r.score)
    out = {}
    for kind in ("verifier", "embedding"):
        mine = [r for r in val if r.name.startswith(kind)]
        if not mine:
            continue
        pick = next(r for r in test if r.name == max(mine, key=lambda r: r.score).name)
        diff = pick.rows - fixed.rows
        low, high = bootstrap_interval(diff, rng, n_boot)
        out[kind] = {"strategy": pick.name, "score": pick.score, "fixed": fixed.name,
                     "fixed_score": fixed.score,
                     "diff": float(diff.mean()), "low": low, "high": high,
                     "goal": bool(diff.mean() >= 0.01 and low > 0),
                     "s_per_row": max(r.seconds for r in test if r.name.startswith(kind)) / len(pick.rows)}
    return out


def head_lines(checks: dict) -> list[str]:
    """The head checks as markdown lines."""
    return [f"Head **{k}**: tuned on validation **{c['strategy']}** {c['score']:.4f} vs best fixed on test "
            f"**{c['fixed']}** {c['fixed_score']:.4f}: {c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]; "
            f"goal (>= +0.01, interval above 0): **{c['goal']}**; scoring at most {c['s_per_row'] * 1000:.1f}"
            " ms/row (the first strategy of a head also loads it).  " for k, c in checks.items()]


def write(frame: pd.DataFrame, args, seconds: float, name: str = "combination") -> list[Path]:
    """``<name>.{csv,md,png}`` in ``args.out``."""
    plt = pyplot()

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / f"{name}.csv", index=False, float_format="%.5f")
    rows = frame.attrs["rows"]
    md = [f"# Combination on {args.test_samples.name} (tuned on {args.val_samples.name})", "",
          __doc__.split("\n\n")[0].replace("\n", " "), "",
          f"Embedder `{args.embedder}`; {rows['val']} validation rows, {rows['test']} test rows; "
          f"tuned choice: **{frame.attrs['tuned']}**; seed {args.seed}; {seconds:.0f} s.", "",
          "Test split (scores: mean cos^3; intervals: bootstrap 95%; *vs first*: paired difference):", "",
          frame.attrs["table"], "", *head_lines(frame.attrs.get("heads", {})), "", "Validation scores: " +
          ", ".join(f"{r.strategy} {r.val_score:.4f}" for r in frame.itertuples()), ""]
    (out / f"{name}.md").write_text("\n".join(md))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(frame)), 3.8))
    err = np.array([frame.test_score - frame.test_low, frame.test_high - frame.test_score])
    colors = ["tab:orange" if t else "tab:blue" for t in frame.tuned]
    ax.bar(frame.strategy, frame.test_score, yerr=err, capsize=3, color=colors)
    ax.set_ylabel("test score (mean cos^3), 95% CI")
    ax.set_title(f"combination strategies (orange: tuned on validation, {args.embedder})", fontsize=9)
    ax.tick_params(axis="x", rotation=45, labelsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=120)
    plt.close(fig)
    return [out / f"{name}.{ext}" for ext in ("md", "csv", "png")]


def main(argv=None, ctx: CombineContext | None = None) -> int:
    args = parse(argv)
    start = time.perf_counter()
    try:
        frame = run(args, ctx or CombineContext(Scorer(args.embedder, progress=False)))
    except RecoverlibError as err:
        print(f"combination: error: {err}", file=sys.stderr)
        return 2
    paths = write(frame, args, time.perf_counter() - start)
    print(frame.attrs["table"])
    print(f"tuned: {frame.attrs['tuned']}; wrote {', '.join(map(str, paths))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
