"""Full-vocabulary search: does trying every whole-word token of the embedder at every step (the 2nd place's
mean prompt search) find a mean prompt, or a suffix, that scores better on held-out rows than today's seeded
sample of a few hundred tokens per step, and what does it cost?

Mean prompt: ``recoverlib optimize-prompt`` (greedy, ``--vocab tokens``) on the synthetic task's train
prompts, scored on its validation prompts (held out). Suffix: ``recoverlib search-suffix`` appended to one
adapter's greedy predictions (the samples ``benchmarks/ensemble_quality.py`` cached for ambiguity 0.5;
skipped when absent), searched on ``--suffix-rows`` validation rows, scored on every test row (held out). The
whole vocabulary on every row would embed rows x 21,000 texts per step, so the full suffix search screens:
every token ranked on ``--screen`` rows, the best 256 scored on all. Both under plain MiniLM and its
sentence-t5-like geometry (``minilm@t5like``); same steps for both; the sampled search draws ``--sample``
tokens with a fixed seed.

Reproduce (the full vocabulary is about 21,000 MiniLM tokens; about 28 minutes on 2 cores, a screened suffix
step embedding 21,000 x 4 texts in about 4 minutes)::

    python -m benchmarks.search_vocab --steps 3 --screen 4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from benchmarks.report import machine_info, machine_line, pyplot, results_dir, write_table
from recoverlib.cache import cache_root
from recoverlib.combine.context import CombineContext
from recoverlib.combine.search import (
    SearchConfig,
    optimize_prompt,
    prompt_scorer,
    search_suffix,
    suffix_scorer,
)
from recoverlib.metric import Scorer
from recoverlib.synthetic import TaskConfig, generate


def run_one(
    embedder: str, vocab_size: int | None, steps: int, train: list[str], held: list[str], seed: int
) -> dict:
    ctx = CombineContext(Scorer(embedder, progress=True))
    config = SearchConfig(steps=steps, vocab="tokens", vocab_size=vocab_size, seed=seed)
    start = time.perf_counter()
    result = optimize_prompt(train, ctx, config)
    seconds = time.perf_counter() - start
    held_score = float(prompt_scorer(held, ctx)([result.text])[0])
    return {"search": "mean prompt", "embedder": embedder, "vocabulary": _vocab_label(vocab_size, None),
            "steps_run": len(result.history), "found": result.text, "train_score": result.score,
            "held_out_score": held_score, "held_out_without": float("nan"), "seconds": seconds}


def _vocab_label(vocab_size: int | None, screen: int | None) -> str:
    if vocab_size is not None:
        return f"sample of {vocab_size}"
    return "all" if screen is None else f"all, screened on {screen} rows"


def suffix_data(cache: Path, rows: int, adapter: str = "tiny-a"):
    """(train predictions, train truths, held-out predictions, held-out truths) from ensemble_quality's cache
    of ambiguity 0.5: ``adapter``'s greedy prediction per row; None when that cache is absent."""
    from recoverlib.io import read_samples, read_truth

    samples, model = cache / "samples-0.5", cache / "model-0.5" / "task"
    if not (samples / "test.jsonl").is_file():
        return None

    def greedy(split: str, truth_csv: Path, limit: int | None):
        got, truth = read_samples(samples / f"{split}.jsonl"), read_truth(truth_csv)
        ids = [i for i in got if i in truth][:limit]
        first = {i: next(s.text for s in got[i] if s.adapter == adapter and s.index == 0) for i in ids}
        return [first[i] for i in ids], [truth[i] for i in ids]

    return (
        *greedy("validation", model / "validation.csv", rows),
        *greedy("test", model / "test_truth.csv", None),
    )


def run_suffix(
    embedder: str, vocab_size: int | None, screen: int | None, steps: int, data, seed: int
) -> dict:
    train_p, train_t, held_p, held_t = data
    ctx = CombineContext(Scorer(embedder, progress=False))
    config = SearchConfig(steps=steps, vocab="tokens", vocab_size=vocab_size, seed=seed, screen=screen)
    start = time.perf_counter()
    result = search_suffix(train_p, train_t, ctx, config)
    seconds = time.perf_counter() - start
    held = suffix_scorer(held_p, held_t, ctx)
    with_suffix, without = (float(x) for x in held([result.text, ""]))
    return {"search": "suffix", "embedder": embedder, "vocabulary": _vocab_label(vocab_size, screen),
            "steps_run": len(result.history), "found": result.text, "train_score": result.score,
            "held_out_score": with_suffix, "held_out_without": without, "seconds": seconds}


def plot(frame: pd.DataFrame, path: Path) -> None:
    plt = pyplot()

    searches = list(dict.fromkeys(frame.search))
    fig, axes = plt.subplots(len(searches), 2, figsize=(10, 3.5 * len(searches)), squeeze=False)
    for row, search in zip(axes, searches, strict=True):
        part_s = frame[frame.search == search]
        for ax, col, label in (
            (row[0], "held_out_score", "held-out mean cos^3"),
            (row[1], "seconds", "seconds"),
        ):
            for k, (embedder, part) in enumerate(part_s.groupby("embedder", sort=False)):
                ax.bar([x + 0.4 * k for x in range(len(part))], part[col], width=0.4, label=embedder)
            ax.set_xticks([x + 0.2 for x in range(len(part))], list(part.vocabulary), fontsize=8)
            ax.set_ylabel(label)
            ax.set_title(search, fontsize=9)
            ax.grid(axis="y", alpha=0.3)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument(
        "--sample", type=int, default=200, help="tokens per step of the sampled search (today's default)"
    )
    ap.add_argument("--embedders", nargs="+", default=["minilm", "minilm@t5like"])
    ap.add_argument("--train-prompts", type=int, default=400, help="train prompts the search scores against")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--suffix-rows", type=int, default=48, help="validation rows the suffix search scores")
    ap.add_argument("--screen", type=int, default=8, help="rows the full suffix search ranks every token on")
    ap.add_argument("--cache", type=Path, default=cache_root() / "ensemble_quality",
                    help="ensemble_quality's cache (its samples give the suffix search its predictions)")
    ap.add_argument("--quick", action="store_true", help="1 step, sampled vocabularies only (smoke run)")
    args = ap.parse_args(argv)
    out = results_dir(args.out, args.quick)
    rows = generate(TaskConfig())
    train = [r.rewrite_prompt for r in rows["train"]][: args.train_prompts]
    held = [r.rewrite_prompt for r in rows["validation"]]
    sizes = (args.sample, 2 * args.sample) if args.quick else (args.sample, None)
    steps = 1 if args.quick else args.steps
    results = [run_one(e, size, steps, train, held, args.seed) for e in args.embedders for size in sizes]
    data = suffix_data(args.cache, 8 if args.quick else args.suffix_rows)
    if data is None:
        print(f"no cached ensemble_quality samples under {args.cache}: the suffix comparison is skipped")
    else:
        variants = [(args.sample, None), (2 * args.sample, 2)] if args.quick else [(args.sample, None),
                                                                                   (None, args.screen)]
        results += [run_suffix(e, size, screen, steps, data, args.seed)
                    for e in args.embedders for size, screen in variants]
    frame = pd.DataFrame(results)
    name = "search_vocab" + ("_quick" if args.quick else "")
    notes = [
        f"Machine: {machine_line(machine_info())}",
        "Task: synthetic (ambiguity 0.5), scored with MiniLM and its simulated sentence-t5-like geometry. "
        "Mean "
        f"prompt: searched on {len(train)} train prompts, held out: {len(held)} validation prompts. Suffix: "
        + (
            "skipped (no cached ensemble_quality samples)."
            if data is None
            else f"appended to tiny-a's greedy predictions, searched on {len(data[0])} validation rows, "
                 "held out: "
            f"{len(data[2])} test rows; *held_out_without* is those predictions with no suffix."
        )
        + f" Greedy (beam 1), {steps} step(s) at most, seed {args.seed}.",
        "Command: python -m benchmarks.search_vocab " + " ".join(argv if argv is not None else sys.argv[1:]),
    ]
    md = write_table(frame.round(4), out, name, "Mean-prompt search: whole vocabulary vs a sample", notes)
    plot(frame, out / f"{name}.png")
    print(frame.round(4).to_string())
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
