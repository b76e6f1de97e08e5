"""The command line: parse, call the library, print. No logic of its own.

A :class:`RecoverlibError` is printed as one line (``recoverlib: error: ...``) with exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from recoverlib.errors import RecoverlibError

log = logging.getLogger("recoverlib")


def _adapter_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def parse_adapters(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """``[(name, path)]`` -> dict; a repeated name is an error, not a silent overwrite."""
    out: dict[str, str] = {}
    for name, path in pairs:
        if name in out:
            raise RecoverlibError(f"duplicate adapter name {name!r} (given for {out[name]} and {path})")
        out[name] = path
    return out


def cmd_make_tiny(args) -> int:
    if args.trained:
        from recoverlib.trained_tiny import make_trained_tiny

        out = make_trained_tiny(args.out_dir, adapters=args.adapters, seed=args.seed)
    else:
        from recoverlib.tiny import make_tiny

        out = make_tiny(args.out_dir, adapters=args.adapters, seed=args.seed)
    print(f"tiny model: {out / 'model'}")
    for p in sorted((out / "adapters").glob("*")):
        print(f"adapter {p.name}: {p}")
    return 0


def _engine_config(args):
    from recoverlib.engines import EngineConfig

    return EngineConfig(dtype=args.dtype, max_model_len=args.max_model_len, batch_size=args.batch_size,
                        kv_cache_gib=args.kv_cache_gib, in_process=not args.multiprocess, lora_mode=args.lora_mode,
                        merge_cache=args.merge_cache, dequantized_merge=args.dequantized_merge)


def cmd_predict(args) -> int:
    from recoverlib.combine import CombineContext, ConcatConfig, load_combination
    from recoverlib.predict import PredictConfig, predict

    combination = load_combination(args.combination) if args.combination else ConcatConfig(separator=args.separator)
    config = PredictConfig(
        samples=args.samples, temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
        seed=args.seed, include_base=args.include_base, fallback_prompt=args.fallback_prompt,
        combination=combination, chunk_rows=args.chunk_rows,
    )
    start = time.perf_counter()
    preds = predict(args.model, args.input, args.output, parse_adapters(args.adapter or []), args.engine, config,
                    _engine_config(args), args.save_samples, args.resume, CombineContext(embedder=args.embedder),
                    close_engine=not args.process_exits)
    fallbacks = sum(p.fallback is not None for p in preds)
    print(f"wrote {len(preds)} predictions to {args.output} in {time.perf_counter() - start:.1f} s"
          + (f" ({fallbacks} row(s) got the fallback prompt)" if fallbacks else ""))
    return 0


def cmd_score(args) -> int:
    from recoverlib.io import read_truth
    from recoverlib.metric import Scorer

    preds, truth = read_truth(args.predictions), read_truth(args.truth)
    missing = sorted(set(truth) - set(preds))
    if missing:
        raise RecoverlibError(f"{args.predictions}: no prediction for {len(missing)} id(s), e.g. {missing[0]}")
    ids = list(truth)
    score = Scorer(args.embedder).score([preds[i] for i in ids], [truth[i] for i in ids])
    print(f"score {score:.4f} over {len(ids)} rows (embedder {args.embedder})")
    return 0


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default="vllm", help="vllm (default) or hf (transformers + PEFT)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--max-model-len", type=int, default=None, help="context tokens (default: the model's, at most 4096)")
    p.add_argument("--batch-size", type=int, default=16, help="hf engine: prompts per generate call")
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="vllm on CPU: KV cache size")
    p.add_argument("--multiprocess", action="store_true", help="vllm: default multiprocess engine (slower start)")
    p.add_argument("--lora-mode", default="auto", choices=("dynamic", "merged", "auto"),
                   help="adapters as LoRA in one batch, as merged weights one after another, or chosen by cost")
    p.add_argument("--merge-cache", default=None, help="merged-weights cache (default ~/.cache/recoverlib/merged)")
    p.add_argument("--dequantized-merge", action="store_true", help="allow merging adapters into a quantized base")


def build_parser() -> argparse.ArgumentParser:
    from recoverlib.metric import COMPETITION_EMBEDDER
    from recoverlib.predict import DEFAULT_FALLBACK

    parser = argparse.ArgumentParser(prog="recoverlib", description="Recover the prompt an LLM rewrote a text with.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show info logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-tiny", help="write a tiny Mixtral, its tokenizer and LoRA adapters (no download)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--adapters", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trained", action="store_true",
                   help="train the base on the synthetic task, then the adapters (minutes; cached)")
    p.set_defaults(func=cmd_make_tiny)

    p = sub.add_parser("predict", help="recover prompts for a Kaggle CSV and write the submission")
    p.add_argument("--model", required=True, type=Path, help="HF model folder")
    p.add_argument("--adapter", action="append", type=_adapter_arg, metavar="NAME=PATH", help="a PEFT LoRA folder")
    p.add_argument("--input", required=True, type=Path, help="CSV with id, original_text, rewritten_text")
    p.add_argument("--output", required=True, type=Path, help="submission CSV (id, rewrite_prompt)")
    p.add_argument("--samples", type=int, default=4, help="sampled predictions per row and adapter")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--include-base", action="store_true", help="also sample the base model")
    p.add_argument("--separator", default=" ", help="joins the combined predictions (default combination: concat)")
    p.add_argument("--combination", type=Path, help="combination config JSON (from `recoverlib tune`)")
    p.add_argument("--embedder", default=COMPETITION_EMBEDDER,
                   help="embedder for combinations that embed: name, folder, or 'minilm' (offline)")
    p.add_argument("--fallback-prompt", default=DEFAULT_FALLBACK, help="for rows that cannot be served")
    p.add_argument("--save-samples", type=Path, help="JSONL of every row's cleaned samples")
    p.add_argument("--resume", action="store_true", help="continue from --save-samples")
    p.add_argument("--chunk-rows", type=int, default=None,
                   help="rows per generate call, samples saved after each (default: the engine's, vllm 512, hf 64)")
    _add_engine_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("score", help="mean sharpened cosine (cos^3) of predictions against truths")
    p.add_argument("--predictions", required=True, type=Path)
    p.add_argument("--truth", required=True, type=Path)
    p.add_argument("--embedder", default=COMPETITION_EMBEDDER, help="name, folder, or 'minilm' (offline)")
    p.set_defaults(func=cmd_score)

    from recoverlib.combine.cli import add_combine_commands
    from recoverlib.quant.cli import add_quant_commands
    from recoverlib.train_cli import add_task_commands

    add_quant_commands(sub)
    add_task_commands(sub)
    add_combine_commands(sub)
    return parser


class _OneLine(logging.Formatter):
    def format(self, record):
        return f"recoverlib: {record.levelname.lower()}: {record.getMessage()}"


def main(argv: list[str] | None = None, process_exits: bool = False) -> int:
    """Run one command; ``process_exits``: the process ends right after, so engines need not be shut down."""
    args = build_parser().parse_args(argv)
    args.process_exits = process_exits
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    log.addHandler(handler)
    log.setLevel(logging.INFO if args.verbose else logging.WARNING)
    log.propagate = False
    try:
        return args.func(args)
    except RecoverlibError as err:
        print(f"recoverlib: error: {err}", file=sys.stderr)
        return 2
    finally:
        log.removeHandler(handler)


def run() -> None:
    """Console entry point: :func:`main`, then exit without tearing the interpreter down.

    With vLLM and torch loaded, interpreter finalization took about 2 s after the work was done, and shutting the
    vLLM engine down about 1.3 s more (measured on the 2-core CPU); the exit releases all of it at once. By then
    every output file is closed; stdio and logging are flushed before the exit.
    """
    code = main(process_exits=True)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
