"""Full-vocabulary search: does trying every whole-word token of the embedder at every step (the 2nd place's mean
prompt search) find a mean prompt that scores better on held-out prompts than today's seeded sample of a few
hundred tokens per step, and what does it cost?

Both searches are ``recoverlib optimize-prompt`` (greedy, ``--vocab tokens``) on the synthetic task's train prompts,
scored on its validation prompts (held out), under plain MiniLM and its sentence-t5-like geometry
(``minilm@t5like``). Same steps for both; the sampled search draws ``--sample`` tokens with a fixed seed.

Reproduce (the full vocabulary is about 21,000 MiniLM tokens, embedded once per step; tens of minutes on 2 cores)::

    python benchmarks/search_vocab.py --steps 3
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/X.py`: make the repository's `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import time

import pandas as pd

from benchmarks.report import machine_info, machine_line, results_dir, write_table
from recoverlib.combine.context import CombineContext
from recoverlib.combine.search import SearchConfig, optimize_prompt, prompt_scorer
from recoverlib.metric import Scorer
from recoverlib.synthetic import TaskConfig, generate


def run_one(embedder: str, vocab_size: int | None, steps: int, train: list[str], held: list[str], seed: int) -> dict:
    ctx = CombineContext(Scorer(embedder, progress=True))
    config = SearchConfig(steps=steps, vocab="tokens", vocab_size=vocab_size, seed=seed)
    start = time.perf_counter()
    result = optimize_prompt(train, ctx, config)
    seconds = time.perf_counter() - start
    held_score = float(prompt_scorer(held, ctx)([result.text])[0])
    return {"embedder": embedder, "vocabulary": "all" if vocab_size is None else f"sample of {vocab_size}",
            "steps_run": len(result.history), "prompt": result.text, "train_score": result.score,
            "held_out_score": held_score, "seconds": seconds}


def plot(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, col, label in ((axes[0], "held_out_score", "held-out mean cos^3"), (axes[1], "seconds", "seconds")):
        for k, (embedder, part) in enumerate(frame.groupby("embedder", sort=False)):
            ax.bar([x + 0.4 * k for x in range(len(part))], part[col], width=0.4, label=embedder)
        ax.set_xticks([x + 0.2 for x in range(len(part))], list(part.vocabulary), fontsize=8)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--sample", type=int, default=200, help="tokens per step of the sampled search (today's default)")
    ap.add_argument("--embedders", nargs="+", default=["minilm", "minilm@t5like"])
    ap.add_argument("--train-prompts", type=int, default=400, help="train prompts the search scores against")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="1 step, sampled vocabularies only (smoke run)")
    args = ap.parse_args(argv)
    out = results_dir(args.out, args.quick)
    rows = generate(TaskConfig())
    train = [r.rewrite_prompt for r in rows["train"]][: args.train_prompts]
    held = [r.rewrite_prompt for r in rows["validation"]]
    sizes = (args.sample, 2 * args.sample) if args.quick else (args.sample, None)
    steps = 1 if args.quick else args.steps
    results = [run_one(e, size, steps, train, held, args.seed) for e in args.embedders for size in sizes]
    frame = pd.DataFrame(results)
    name = "search_vocab" + ("_quick" if args.quick else "")
    notes = [f"Machine: {machine_line(machine_info())} (shared with other jobs while it ran)",
             f"Task: synthetic (ambiguity 0.5); the search scores {len(train)} train prompts, held out: "
             f"{len(held)} validation prompts; greedy (beam 1), {steps} step(s) at most, seed {args.seed}.",
             "Command: python benchmarks/search_vocab.py " + " ".join(argv if argv is not None else sys.argv[1:])]
    md = write_table(frame.round(4), out, name, "Mean-prompt search: whole vocabulary vs a sample", notes)
    plot(frame, out / f"{name}.png")
    print(frame.round(4).to_string())
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
