"""Ensemble quality, the seed's table in miniature: on the synthetic task, does sampling more predictions
from one adapter, or joining several adapters, or appending the best constant prompt raise the score over the
single greedy prediction of one adapter, and does that change when the task is more ambiguous?

Per ambiguity level: a trained tiny Mixtral with LoRA adapters (``make_trained_tiny``, cached), one generation
pass through vLLM (merged LoRA) on the validation and test splits (greedy for the base and each adapter, and
``n`` seeded samples per adapter at temperature 0.7); every table row is then computed from those samples with
recoverlib's combine strategies: best constant prompt, base / each adapter greedy, one adapter's n samples
concatenated, all adapters concatenated (greedy, n samples), each with the constant prompt appended. Scores
are mean cos^3 with bootstrap 95% intervals and paired differences against the first adapter's greedy
prediction, under two metric geometries: MiniLM as it is, and MiniLM moved toward sentence-t5's anisotropy
(``minilm@t5like``, a simulation; see ``benchmarks/geometry.py``), since whether hedging pays depends on it.
Then ``benchmarks/combination.py`` tunes a combination on the validation samples and scores every strategy on
the test samples (rows marked ``test``), under each geometry. The grid includes the strategies of two learned
heads (``benchmarks/ensemble_heads.py``): a verifier and an embedding regressor on the same base, trained on
the model's own samples on a slice of the training split (``--head-rows``; ``--no-heads`` leaves them out).

Writes ``benchmarks/results/ensemble_quality.{md,csv,png}`` and
``combination_<level>[_t5like].{md,csv,png}``; the samples files (``recoverlib tune`` / ``combination.py``
input: every adapter's greedy as index 0, then its samples) and the constant prompt go to
``--cache``/samples-<level>/{validation,test}.jsonl, constant.txt.
Reproduce (about 35 minutes on 2 busy CPU cores from scratch, training three models; about 12 once cached)::

    PYTHONPATH=. .venv/bin/python -m benchmarks.ensemble_quality

``--train-rows N --pretrain-epochs E`` train smaller models (faster, lower scores); ``--tag TAG`` names the
results ``ensemble_quality_TAG`` and ``combination_TAG_<level>`` so they sit beside the default ones.
``--quick``: 2 adapters, 8 rows, 2 samples, 200 resamples; uses the full trained models when cached, else
trains a tiny one (quality meaningless; for tests and smoke runs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import combination
from benchmarks.ensemble_heads import QUICK_HEADS, HeadSetup, head_notes, train_heads
from benchmarks.ensemble_report import criterion, md_table, tag, write_outputs
from benchmarks.ensemble_rows import GREEDY, SAMPLED, Generated, baseline_name, score_table, table_specs
from benchmarks.report import results_dir
from recoverlib.cache import cache_root
from recoverlib.combine import CombineContext, Sample
from recoverlib.engines.base import SamplingConfig
from recoverlib.io import read_rows, read_truth
from recoverlib.metric import Scorer
from recoverlib.pipeline import PredictConfig, predict_rows
from recoverlib.synthetic.generator import TaskConfig
from recoverlib.tiny.trained import STAMP, TrainedTinyConfig, cache_key, make_trained_tiny
from recoverlib.training.evaluate import best_constant_prompt
from recoverlib.training.pretrain import PretrainConfig

SPLITS = ("validation", "test")


@dataclass(frozen=True)
class Setup:
    levels: tuple[float, ...] = (0.0, 0.5, 1.0)
    adapters: int = 4
    rows: int | None = None  # rows per split (None: the whole split)
    samples: int = 8
    counts: tuple[int, ...] = (1, 2, 4, 8)
    temperature: float = 0.7
    max_new_tokens: int = 32
    bootstrap: int = 2000
    seed: int = 0
    heads: HeadSetup | None = HeadSetup()  # None: no learned heads
    train_rows: int | None = None  # a smaller trained model: its training rows (None: TaskConfig's 6000)
    pretrain_epochs: int | None = None  # and its base's epochs (None: PretrainConfig's 3)


QUICK = Setup(
    levels=(0.5, 1.0), adapters=2, rows=8, samples=2, counts=(1, 2), bootstrap=200, heads=QUICK_HEADS
)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--levels", type=float, nargs="+", help="ambiguity levels (default 0 0.5 1; --quick: 0.5 1)"
    )
    p.add_argument("--adapters", type=int, help="trained adapters (default 4; --quick: 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", type=int, help="rows per split (default: all)")
    p.add_argument("--head-rows", type=int, help="training rows sampled for the heads (default 300)")
    p.add_argument("--no-heads", action="store_true", help="leave the learned heads out")
    p.add_argument("--head-engine", choices=("hf", "vllm"), default="hf",
                   help="where the heads score (recoverlib.heads.engines; training is hf)")
    p.add_argument("--tag", default="", help="results named ensemble_quality_TAG, combination_TAG_<level>")
    p.add_argument("--train-rows", type=int, help="train a smaller model: training rows (default 6000)")
    p.add_argument("--pretrain-epochs", type=int, help="train a smaller model: base epochs (default 3)")
    p.add_argument(
        "--out", type=Path, default=None, help="results folder (default benchmarks/results; --quick: scratch)"
    )
    p.add_argument("--cache", type=Path, default=cache_root() / "ensemble_quality", help="models and samples")
    p.add_argument(
        "--embedders",
        nargs="+",
        default=["minilm", "minilm@t5like"],
        help="every table is scored under each (default: MiniLM and its sentence-t5-like geometry)",
    )
    args = p.parse_args(argv)
    args.out = results_dir(args.out, args.quick)
    return args


def setup_of(args) -> Setup:
    setup = replace(QUICK if args.quick else Setup(), seed=args.seed)
    if args.levels:
        setup = replace(setup, levels=tuple(args.levels))
    if args.rows:
        setup = replace(setup, rows=args.rows)
    setup = replace(setup, train_rows=args.train_rows, pretrain_epochs=args.pretrain_epochs)
    if args.no_heads:
        setup = replace(setup, heads=None)
    elif args.head_rows:
        setup = replace(setup, heads=replace(setup.heads, rows=args.head_rows))
    return replace(setup, adapters=args.adapters) if args.adapters else setup


def trained_model(cache: Path, level: float, setup: Setup, quick: bool) -> tuple[Path, str]:
    """The trained tiny for ``level`` (cached); in quick mode a tiny one when the full one is not cached."""
    config = TrainedTinyConfig(task=TaskConfig(ambiguity=level))
    note = "full trained model"
    if setup.train_rows or setup.pretrain_epochs:
        config = TrainedTinyConfig(
            task=replace(config.task, rows=setup.train_rows or config.task.rows),
            pretrain=PretrainConfig(epochs=setup.pretrain_epochs or config.pretrain.epochs),
        )
        note = (f"smaller trained model ({config.task.rows} training rows, {config.pretrain.epochs} base "
                "epochs)")
    cached = cache_root() / f"trained-tiny-{cache_key(setup.adapters, setup.seed, config)}" / STAMP
    if quick and not cached.is_file():
        print(
            f"level {level}: no cached full trained model; training a tiny one (--quick: quality meaningless)"
        )
        config = TrainedTinyConfig(
            task=TaskConfig(rows=96, eval_rows=max(8, setup.rows or 8), ambiguity=level),
            pretrain=PretrainConfig(epochs=1),
        )
        note = "tiny quick-trained model (96 rows, 1 epoch)"
    start = time.perf_counter()
    out = make_trained_tiny(cache / f"model-{level}", adapters=setup.adapters, seed=setup.seed, config=config)
    print(f"level {level}: {note} ready in {time.perf_counter() - start:.0f} s")
    return out, note


def split_files(model_dir: Path, split: str) -> tuple[Path, Path]:
    task = model_dir / "task"
    if split in ("validation", "train"):
        return task / f"{split}.csv", task / f"{split}.csv"
    return task / "test.csv", task / "test_truth.csv"


def generate(engine, rows, setup: Setup, out_dir: Path) -> Generated:
    """Greedy (base and adapters) and ``setup.samples`` sampled predictions per adapter; seconds; tokens."""
    greedy = PredictConfig(SamplingConfig(samples=1, temperature=0.0, max_new_tokens=setup.max_new_tokens,
                                          seed=setup.seed), include_base=True)
    sampled = PredictConfig(SamplingConfig(samples=setup.samples, temperature=setup.temperature,
                                           max_new_tokens=setup.max_new_tokens, seed=setup.seed))
    samples, seconds = {}, {}
    for kind, config in ((GREEDY, greedy), (SAMPLED, sampled)):
        start = time.perf_counter()
        preds = predict_rows(engine, rows, config, samples_file=out_dir / f"{kind}.jsonl")
        seconds[kind] = time.perf_counter() - start
        samples[kind] = {p.id: p.samples for p in preds}
    tok = engine.tokenizer
    tokens = {(kind, i, s.adapter, s.index): len(tok(s.text, add_special_tokens=False)["input_ids"]) + 1
              for kind, rows_ in samples.items() for i, row in rows_.items() for s in row}
    return Generated(samples, seconds, tokens)


def combined_samples(gen: Generated) -> dict[str, tuple[Sample, ...]]:
    """Adapters only: greedy as index 0, then the samples as 1..n (``first`` = the first adapter's greedy)."""
    return {i: tuple([s for s in gen.samples[GREEDY][i] if s.adapter is not None] +
                     [replace(s, index=s.index + 1) for s in gen.samples[SAMPLED][i]])
            for i in gen.samples[GREEDY]}


def write_samples(path: Path, rows: dict[str, tuple[Sample, ...]]) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"id": i, "samples": [{"adapter": s.adapter, "index": s.index, "text": s.text}
                                              for s in got]}) for i, got in rows.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def constant_prompt(model_dir: Path, scorer) -> tuple[str, float, float]:
    """The best constant prompt over the train split's prompts: (text, its train score, seconds)."""
    start = time.perf_counter()
    prompts = pd.read_csv(model_dir / "task" / "train.csv")["rewrite_prompt"].astype(str).tolist()
    text, score = best_constant_prompt(prompts, scorer=scorer)
    return text, score, time.perf_counter() - start


def sample_splits(model_dir: Path, setup: Setup, samples_dir: Path) -> dict[str, Generated]:
    """Both splits through one vLLM engine (merged LoRA), greedy and sampled passes each."""
    from recoverlib.engines import EngineConfig, make_engine
    from recoverlib.tiny import adapter_paths

    out = {}
    with make_engine(
        "vllm", model_dir / "model", adapter_paths(model_dir), EngineConfig(lora_mode="merged")
    ) as eng:
        for split in SPLITS:
            rows = read_rows(split_files(model_dir, split)[0])[: setup.rows]
            out[split] = generate(eng, rows, setup, samples_dir / split)
        if setup.heads is not None:  # the heads' training data: the model's own samples on training rows
            rows = read_rows(split_files(model_dir, "train")[0])[: setup.heads.rows]
            out["train"] = generate(eng, rows, setup, samples_dir / "train")
    return out


def geometry_suffix(embedder: str) -> str:
    """File-name suffix of an embedder's results: "" for plain MiniLM, "_t5like" for ``minilm@t5like``."""
    return "".join(f"_{m}" for m in embedder.split("@")[1:])


def run_level(
    level: float, setup: Setup, args, contexts: dict[str, CombineContext]
) -> tuple[list[dict], list[dict]]:
    """The level's table rows under every embedder (validation, then the combination's on test) and their
    notes.

    Generation runs once; each embedder scores the same samples, so the geometries differ in scoring only.
    """
    model_dir, note = trained_model(args.cache, level, setup, args.quick)
    adapters = sorted(p.name for p in (model_dir / "adapters").iterdir() if p.is_dir())
    samples_dir = args.cache / f"samples-{level}"
    # every run samples afresh (its timings are the table's): an earlier run's passes, whole or cut short by a
    # kill, would be refused as a samples file that already holds samples
    shutil.rmtree(samples_dir / "passes", ignore_errors=True)
    gen = sample_splits(model_dir, setup, samples_dir / "passes")
    files = {s: write_samples(samples_dir / f"{s}.jsonl", combined_samples(gen[s])) for s in SPLITS}
    heads = None
    if setup.heads is not None:
        heads = train_heads(model_dir, combined_samples(gen["train"]), contexts, setup.heads, setup.seed,
                            args.cache / f"heads-{level}")
    rows, infos = [], []
    for embedder, ctx in contexts.items():
        rng = np.random.default_rng([setup.seed, int(level * 1000)])
        const, const_train, const_s = constant_prompt(model_dir, ctx.get_scorer())
        specs = table_specs(adapters, setup.counts, const)
        truth = read_truth(split_files(model_dir, "validation")[1])
        got = score_table(gen["validation"], truth, specs, baseline_name(adapters), ctx, rng, setup.bootstrap)
        got[0]["seconds"] += const_s
        for r in got:
            r.update(level=level, split="validation")
        constant_file = samples_dir / f"constant{geometry_suffix(embedder)}.txt"
        constant_file.write_text(const + "\n")
        frame, comb_s = tune_and_score(model_dir, files, constant_file, level, setup, args, ctx, embedder,
                                       heads)
        got += combination_rows(frame, gen["test"], adapters, setup, level)
        rows += [{**r, "embedder": embedder} for r in got]
        infos.append(
            {
                "level": level,
                "embedder": embedder,
                "model": note,
                "adapters": adapters,
                "constant": const,
                "constant_train": const_train,
                "combination_s": round(comb_s, 1),
                "criterion": criterion(frame),
                "generation_s": {s: round(sum(g.seconds.values()), 1) for s, g in gen.items() if s in SPLITS},
                "heads": heads and head_notes(heads, embedder, frame.attrs["heads"],
                                              sum(gen["train"].seconds.values())),
            }
        )
    return rows, infos


def tune_and_score(
    model_dir: Path, files: dict, mean: Path, level: float, setup: Setup, args, ctx, embedder: str,
    heads: dict | None = None,
):
    """``benchmarks/combination.py`` on this level: tune on validation, score on test; writes its files."""
    argv = [
        "--val-samples",
        str(files["validation"]),
        "--val-truth",
        str(split_files(model_dir, "validation")[1]),
        "--test-samples",
        str(files["test"]),
        "--test-truth",
        str(split_files(model_dir, "test")[1]),
        "--mean-prompt",
        str(mean),
        "--bootstrap",
        str(setup.bootstrap),
        "--seed",
        str(setup.seed),
        "--out",
        str(args.out),
        "--embedder",
        embedder,
    ] + (["--quick"] if args.quick else [])
    if heads is not None:
        argv += ["--verifier", heads["verifier"][embedder]["path"],
                 "--embedding-head", heads["embedding"]["path"],
                 "--val-rows", str(split_files(model_dir, "validation")[0]),
                 "--test-rows", str(split_files(model_dir, "test")[0])]
    cargs = combination.parse(argv)
    start = time.perf_counter()
    frame = combination.run(cargs, ctx)
    seconds = time.perf_counter() - start
    name = f"combination{tag(args)}_{level}{geometry_suffix(embedder)}"
    combination.write(frame, cargs, seconds, name=name)
    return frame, seconds


def combination_rows(frame: pd.DataFrame, gen: Generated, adapters, setup: Setup, level: float) -> list[dict]:
    """The combination's test rows in the table's columns; they use every adapter's greedy and samples."""
    from benchmarks.ensemble_rows import Spec, spend

    every = Spec(
        "all", "combination", tuple((a, k, setup.samples) for a in adapters for k in (GREEDY, SAMPLED)), None
    )
    tokens, gen_s = spend(gen, every, list(gen.samples[GREEDY]))
    return [
        {
            "strategy": f"combination: {r.strategy}" + (" (tuned)" if r.tuned else ""),
            "group": "combination",
            "score": r.test_score,
            "low": r.test_low,
            "high": r.test_high,
            "vs_greedy": r.vs_first,
            "vs_low": r.vs_first_low,
            "vs_high": r.vs_first_high,
            "tokens_per_row": tokens,
            "seconds": gen_s + r.seconds,
            "level": level,
            "split": "test",
        }
        for r in frame.itertuples()
    ]


def main(argv=None) -> int:
    args = parse(argv)
    args.argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--quick"]
    setup = setup_of(args)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    start = time.perf_counter()
    args.load_before = os.getloadavg()
    contexts = {e: CombineContext(Scorer(e, progress=False), head_engine=args.head_engine)
                for e in args.embedders}
    rows, infos = [], []
    try:
        for level in setup.levels:
            got, level_infos = run_level(level, setup, args, contexts)
            rows += got
            infos += level_infos
            frame = pd.DataFrame(rows)
            paths = write_outputs(frame, infos, setup, args, time.perf_counter() - start, __doc__)
            print(md_table(frame[frame.level == level]))
    finally:
        for ctx in contexts.values():
            ctx.close()
    print(f"wrote {', '.join(map(str, paths))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
