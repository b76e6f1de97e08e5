"""Combination commands: ``optimize-prompt``, ``search-suffix``, ``tune`` and ``combine`` (saved samples
in)."""

from __future__ import annotations

import time
from pathlib import Path

from recoverlib.cli.options import add_embedder, add_out, add_samples_file
from recoverlib.combine.base import combine_rows
from recoverlib.combine.concat import ConcatConfig
from recoverlib.combine.configio import load_combination
from recoverlib.combine.context import CombineContext
from recoverlib.combine.mean_prompt import read_text_file
from recoverlib.combine.search import (
    SearchConfig,
    holdout_split,
    optimize_prompt,
    prompt_scorer,
    search_suffix,
    suffix_scorer,
)
from recoverlib.combine.tune import Candidate, format_table, matched_ids, tune
from recoverlib.errors import RecoverlibError
from recoverlib.heads.engines import DEFAULT_HEAD_ENGINE, HEAD_ENGINES
from recoverlib.heads.model import read_info
from recoverlib.io import read_rows, read_samples, read_truth, write_submission
from recoverlib.metric import Scorer
from recoverlib.output_paths import check_output_file
from recoverlib.pipeline import DEFAULT_FALLBACK


def _context(embedder: str, rows: Path | None = None, head_engine: str = DEFAULT_HEAD_ENGINE):
    """The combine context; ``rows``: a CSV with the rows' texts, for strategies with a learned head, which
    run on ``head_engine``."""
    pairs = {} if rows is None else {r.id: (r.original_text, r.rewritten_text) for r in read_rows(rows)}
    return CombineContext(Scorer(embedder), pairs=pairs, head_engine=head_engine)


def _head_rows(args) -> Path | None:
    """``--rows``, required when a head is named (its strategies read the rows' texts)."""
    heads = [f for f in ("verifier", "embedding_head") if getattr(args, f, None)]
    if heads and args.rows is None:
        raise RecoverlibError(f"--{heads[0].replace('_', '-')} needs --rows: the CSV of the sampled rows "
                              "(id, original_text, rewritten_text)")
    for name in heads:
        read_info(getattr(args, name))  # before any scoring: a bad folder leaves no partial tune behind
    return args.rows


def _search_config(args):
    return SearchConfig(steps=args.steps, beam=args.beam, vocab_size=args.vocab_size,
                        vocab=getattr(args, "vocab", "tokens"), seed=args.seed, screen=args.screen,
                        shortlist=args.shortlist)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def _check_out(args, *names: str) -> None:
    """``--out`` must not be any of the input options ``names`` (e.g. ``"truth"``, ``"samples_file"``)."""

    inputs = []
    for name in names:
        value = getattr(args, name, None)
        for path in value if isinstance(value, list) else [value]:
            inputs.append(("--" + name.replace("_", "-"), path))
    check_output_file(args.out, inputs)


def _at_least(option: str, value: int, low: int) -> None:
    if value < low:
        raise RecoverlibError(f"{option} must be >= {low} (got {value})")


def cmd_optimize_prompt(args) -> int:
    import numpy as np

    _check_out(args, "train", "validation")
    config = _search_config(args)

    prompts = list(read_truth(args.train).values())
    if args.validation:
        train, valid = prompts, list(read_truth(args.validation).values())
    else:
        tr, va = holdout_split(len(prompts), args.holdout, np.random.default_rng(args.seed))
        train, valid = [prompts[i] for i in tr], [prompts[i] for i in va]
    ctx = _context(args.embedder)
    result = optimize_prompt(train, ctx, config)
    _write_text(args.out, result.text)
    val = float(prompt_scorer(valid, ctx)([result.text])[0]) if valid else float("nan")
    print(f"mean prompt: {result.text!r}\ntrain score {result.score:.4f} ({len(train)} prompts), "
          f"validation score {val:.4f} ({len(valid)} prompts); wrote {args.out}", file=args.stdout)
    return 0


def _samples_and_truth(args):
    samples, truth = read_samples(args.samples_file), read_truth(args.truth)
    ids = matched_ids(samples, truth)
    return {i: samples[i] for i in ids}, truth


def cmd_search_suffix(args) -> int:
    import numpy as np

    _check_out(args, "samples_file", "truth", "combination")
    _at_least("--rows", args.rows, 1)
    search = _search_config(args)
    samples, truth = _samples_and_truth(args)
    config = load_combination(args.combination) if args.combination else ConcatConfig()
    ids = list(samples)
    rng = np.random.default_rng(args.seed)
    tr, va = holdout_split(len(ids), args.holdout, rng)
    tr, va = tr[: args.rows], va[: args.rows]  # the search embeds rows x vocabulary texts per step
    ctx = _context(args.embedder)
    preds = combine_rows(samples, config, ctx)
    pick = lambda idx: ([preds[ids[i]] for i in idx], [truth[ids[i]] for i in idx])  # noqa: E731
    result = search_suffix(*pick(tr), ctx, search)
    _write_text(args.out, result.text)
    lines = [f"suffix: {result.text!r}; wrote {args.out}"]
    for name, idx in (("train", tr), ("validation", va)):
        if len(idx):
            score = suffix_scorer(*pick(idx), ctx)
            before, after = score([""])[0], score([result.text])[0]
            lines.append(
                f"{name} ({len(idx)} rows): {before:.4f} without, {after:.4f} with ({after - before:+.4f})"
            )
    print("\n".join(lines), file=args.stdout)
    return 0


def cmd_tune(args) -> int:
    _check_out(args, "samples_file", "truth", "mean_prompt", "suffix", "pipeline", "rows")
    _at_least("--bootstrap", args.bootstrap, 0)
    samples, truth = _samples_and_truth(args)
    mean = read_text_file(args.mean_prompt, "--mean-prompt") if args.mean_prompt else None
    suffix = read_text_file(args.suffix, "--suffix") if args.suffix else None
    extra = [Candidate(Path(p).stem, load_combination(p)) for p in args.pipeline or []]
    start = time.perf_counter()
    with _context(args.embedder, _head_rows(args), args.head_engine) as ctx:
        results = tune(
            samples,
            truth,
            ctx,
            strategies=args.strategies,
            mean_prompt=mean,
            suffix=suffix,
            verifier=str(args.verifier) if args.verifier else None,
            embedding=str(args.embedding_head) if args.embedding_head else None,
            extra=extra,
            n_boot=args.bootstrap,
            seed=args.seed,
            fallback=DEFAULT_FALLBACK,
            out=args.out,
            tuned_on=str(args.samples_file),
        )
    best = results[0]
    print(format_table(results), file=args.stdout)
    print(f"best: {best.name} ({best.score:.4f}, {best.diff:+.4f} vs first) over {len(samples)} rows "
          f"in {time.perf_counter() - start:.1f} s; wrote {args.out}", file=args.stdout)
    return 0


def cmd_combine(args) -> int:
    _check_out(args, "samples_file", "combination", "rows")
    config = load_combination(args.combination)
    samples = read_samples(args.samples_file)
    with _context(args.embedder, args.rows, args.head_engine) as ctx:
        prompts = combine_rows(samples, config, ctx)
    empty = [i for i, p in prompts.items() if not p.strip()]
    texts = [prompts[i].strip() or args.fallback_prompt or DEFAULT_FALLBACK for i in samples]
    write_submission(args.out, list(samples), texts)
    print(
        f"wrote {len(texts)} prompts to {args.out}" + (f" ({len(empty)} got the fallback)" if empty else ""),
        file=args.stdout,
    )
    return 0


def _vocab_size(text: str) -> int | None:
    import argparse

    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got {text!r}") from None


def _search_options(p, steps: int, vocab_size: int) -> None:
    p.add_argument("--steps", type=int, default=steps, help="words or tokens appended at most")
    p.add_argument("--beam", type=int, default=1, help="strings kept per step (1 = greedy)")
    p.add_argument(
        "--vocab-size",
        type=_vocab_size,
        default=vocab_size,
        help="candidates tried per step, or 'all' (the whole vocabulary every step; slow, exhaustive)",
    )
    p.add_argument(
        "--screen",
        type=int,
        help="rank every candidate on this many seeded rows first, then score"
        " only the --shortlist best on all rows (makes --vocab-size all affordable; approximate)",
    )
    p.add_argument("--shortlist", type=int, default=256, help="candidates of the screen scored on all rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=float, default=0.2, help="seeded validation fraction")
    add_out(p, "text file for the found string")
    add_embedder(p)


def _rows_option(p) -> None:
    p.add_argument("--rows", type=Path, help="CSV of the sampled rows (id, original_text, rewritten_text): "
                   "what a verifier or embedding head reads")
    p.add_argument("--head-engine", default=DEFAULT_HEAD_ENGINE, choices=HEAD_ENGINES.names(),
                   help="where learned heads run: hf (transformers + PEFT) or vllm (its pooling runner, "
                   "the head's LoRA per request)")


def add_commands(subparsers) -> None:
    """Register ``optimize-prompt``, ``search-suffix``, ``tune`` and ``combine``."""
    p = subparsers.add_parser(
        "optimize-prompt", help="search a mean prompt that scores well against train prompts"
    )
    p.add_argument("--train", required=True, type=Path, help="CSV with id, rewrite_prompt")
    p.add_argument(
        "--validation", type=Path, help="CSV with id, rewrite_prompt (default: a held-out train part)"
    )
    p.add_argument(
        "--vocab", choices=("words", "tokens"), default="words", help="train-prompt words or embedder tokens"
    )
    _search_options(p, steps=16, vocab_size=200)
    p.set_defaults(func=cmd_optimize_prompt)

    p = subparsers.add_parser(
        "search-suffix", help="search tokens that raise every prediction's score when appended"
    )
    add_samples_file(p, "samples JSONL (predict --samples-file)")
    p.add_argument("--truth", required=True, type=Path, help="CSV with id, rewrite_prompt")
    p.add_argument(
        "--combination", type=Path, help="combination file making the predictions (default: concat)"
    )
    p.add_argument(
        "--rows", type=int, default=64, help="rows the search scores (it embeds rows x vocab per step)"
    )
    _search_options(p, steps=8, vocab_size=100)
    p.set_defaults(func=cmd_search_suffix)

    p = subparsers.add_parser("tune", help="score combination strategies on saved samples; write the best")
    add_samples_file(p, "samples JSONL of a validation split (predict --samples-file)")
    p.add_argument("--truth", required=True, type=Path, help="CSV with id, rewrite_prompt")
    p.add_argument("--strategies", nargs="+", metavar="NAME", help="grid names to try (default: all)")
    p.add_argument("--pipeline", nargs="+", metavar="FILE", help="combination files to try as well")
    p.add_argument("--mean-prompt", type=Path, help="mean prompt file (optimize-prompt): adds its variants")
    p.add_argument("--suffix", type=Path, help="suffix file (search-suffix): adds its variants")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verifier", type=Path, help="verifier head folder (train --head verifier): adds its"
                   " strategies (needs --rows)")
    p.add_argument("--embedding-head", type=Path, help="embedding head folder (train --head embedding): adds"
                   " its strategies (needs --rows)")
    _rows_option(p)
    add_out(p, "combination file (JSON) for the best")
    add_embedder(p)
    p.set_defaults(func=cmd_tune)

    p = subparsers.add_parser(
        "combine", help="combine saved samples with a combination file into a submission"
    )
    add_samples_file(p, "samples JSONL (predict --samples-file)")
    p.add_argument("--combination", required=True, type=Path, help="combination file (tune --out)")
    add_out(p, "submission CSV (id, rewrite_prompt)", old=("--output",))
    p.add_argument("--fallback-prompt", default=None, help="for rows whose samples are all empty")
    _rows_option(p)
    add_embedder(p)
    p.set_defaults(func=cmd_combine)
