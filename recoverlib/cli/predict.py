"""``recoverlib predict`` (a Kaggle CSV in, a submission out) and ``recoverlib score``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from recoverlib.cli.options import add_embedder, add_out, add_samples_file, add_template
from recoverlib.cli.settings import add_settings, settings_from_args
from recoverlib.combine import CombineContext, ConcatConfig, load_combination
from recoverlib.engines import ENGINE_PRESETS, EngineConfig, SamplingConfig
from recoverlib.engines.registry import AUTO, ENGINES
from recoverlib.errors import RecoverlibError
from recoverlib.executors import EXECUTORS
from recoverlib.io import read_truth
from recoverlib.metric import Scorer
from recoverlib.pipeline import DEFAULT_FALLBACK, BaseModel, PredictConfig, predict
from recoverlib.prompt import RecoveryTemplate


def adapter_arg(text: str) -> tuple[str, str]:
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


def parse_models(models: list[str], adapters: list[tuple[str, str]]):
    """``--model`` and ``--adapter`` values -> what :func:`recoverlib.pipeline.predict` takes.

    One ``--model PATH``: that folder, adapters ``NAME=PATH``. Several: ``--model NAME=PATH`` each, adapters
    ``BASE:NAME=PATH`` naming the base they belong to.
    """

    if len(models) == 1 and (Path(models[0]).exists() or "=" not in models[0]):
        return models[0], parse_adapters(adapters)
    named = dict(_name_value(m, "--model", "NAME=PATH when several base models are given") for m in models)
    if len(named) != len(models):
        raise RecoverlibError("--model: two base models have the same name")
    per_base: dict[str, list[tuple[str, str]]] = {n: [] for n in named}
    for name, path in adapters:
        base, sep, short = name.partition(":")
        if not sep or base not in named:
            raise RecoverlibError(
                f"--adapter {name}={path}: with several base models write BASE:NAME=PATH, BASE one of "
                f"{', '.join(named)}"
            )
        per_base[base].append((short, path))
    return [BaseModel(Path(p), parse_adapters(per_base[n]), n) for n, p in named.items()], None


def _name_value(text: str, flag: str, form: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise RecoverlibError(f"{flag} {text}: expected {form}")
    return name, value


def engine_config(args, engine: str | None = None):
    """The settings of the engine ``--engine`` names (``auto``: the local engines'): ``--preset``'s, given
    options on top."""

    name = engine or args.engine
    config_type = EngineConfig if name == AUTO else ENGINES.get(name).config_type
    preset = dict(ENGINE_PRESETS[args.preset]) if getattr(args, "preset", None) else {}
    if preset and config_type is not EngineConfig:

        raise RecoverlibError(f"--preset sets local engine options; engine {name!r} has its own settings")
    return settings_from_args(args, config_type, **preset)


def add_engine_options(p: argparse.ArgumentParser, local_only: bool = False) -> None:
    """``--engine``, ``--preset`` and every registered engine's own options (from its config);
    ``local_only``: the settings of the engines that load the model here (``recoverlib serve``), without
    ``--engine``."""

    if not local_only:
        p.add_argument(
            "--engine",
            default="auto",
            help=f"{', '.join(ENGINES.names())}, or auto (default): vllm where it can serve the model here,"
            " else hf",
        )
    p.add_argument("--preset", choices=sorted(ENGINE_PRESETS),
                   help="engine settings for a known machine (kaggle-t4x2: 2x T4); options given override it")
    seen: set[str] = set()
    types = [EngineConfig] if local_only else [ENGINES.get(name).config_type for name in ENGINES.names()]
    for config_type in dict.fromkeys(types):
        add_settings(p, config_type, seen)


def add_executor_options(p: argparse.ArgumentParser) -> None:
    """``--executor`` and every registered executor's own options."""

    p.add_argument("--executor", default="local",
                   help=f"where chunks run: {', '.join(EXECUTORS.names())} (default local: this process)")
    seen: set[str] = set()
    for name in EXECUTORS.names():
        add_settings(p, EXECUTORS.get(name).config_type, seen)


def executor_config(args):
    return settings_from_args(args, EXECUTORS.get(args.executor).config_type)


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    s = PredictConfig().sampling
    p.add_argument(
        "--samples",
        type=int,
        default=s.samples,
        help="sampled predictions per row and adapter (default %(default)s)",
    )
    p.add_argument(
        "--temperature", type=float, default=s.temperature, help="0 = greedy (default %(default)s)"
    )
    p.add_argument("--top-p", type=float, default=s.top_p)
    p.add_argument("--max-new-tokens", type=int, default=s.max_new_tokens)
    p.add_argument("--seed", type=int, default=s.seed)


def sampling_config(args):
    return SamplingConfig(samples=args.samples, temperature=args.temperature, top_p=args.top_p,
                          max_new_tokens=args.max_new_tokens, seed=args.seed)


def cmd_predict(args) -> int:
    combination = (
        load_combination(args.combination) if args.combination else ConcatConfig(separator=args.separator)
    )
    config = PredictConfig(
        sampling_config(args),
        include_base=args.include_base,
        fallback_prompt=args.fallback_prompt,
        combination=combination,
        chunk_rows=args.chunk_rows,
        template=RecoveryTemplate(kind=args.template),
    )
    start = time.perf_counter()
    engine_cfg = engine_config(args)
    # vLLM's engine-core and worker processes outlive the CLI's os._exit (seen: orphans that kept running and
    # held the CLI's stdout open), so an engine with processes of its own (or a Ray run) is shut down
    # properly.
    own_processes = (
        getattr(engine_cfg, "multiprocess", False)
        or getattr(engine_cfg, "tensor_parallel_size", 1) > 1
        or args.executor != "local"
    )
    model, adapters = parse_models(args.model, args.adapter or [])
    done = predict(
        model,
        args.input,
        args.out,
        adapters=adapters,
        engine=args.engine,
        config=config,
        engine_config=engine_cfg,
        samples_file=args.samples_file,
        resume=args.resume,
        context=CombineContext(embedder=args.embedder),
        executor=args.executor,
        executor_config=executor_config(args),
        close_engine=not args.process_exits or own_processes,
    )
    print(
        f"wrote {done.rows} predictions to {args.out} in {time.perf_counter() - start:.1f} s"
        + (f" ({done.fallbacks} row(s) got the fallback prompt)" if done.fallbacks else ""),
        file=args.stdout,
    )
    return 0


def cmd_score(args) -> int:
    preds, truth = read_truth(args.predictions), read_truth(args.truth)
    missing = sorted(set(truth) - set(preds))
    if missing:
        raise RecoverlibError(
            f"{args.predictions}: no prediction for {len(missing)} id(s), e.g. {missing[0]}"
        )
    ids = list(truth)
    score = Scorer(args.embedder).score([preds[i] for i in ids], [truth[i] for i in ids])
    print(f"score {score:.4f} over {len(ids)} rows (embedder {args.embedder})", file=args.stdout)
    return 0


def add_commands(sub) -> None:
    """Register ``predict`` and ``score``."""

    p = sub.add_parser("predict", help="recover prompts for a Kaggle CSV and write the submission")
    p.add_argument("--model", required=True, action="append", metavar="[NAME=]PATH",
                   help="HF model folder; repeat as NAME=PATH to serve several base models one after another")
    p.add_argument("--adapter", action="append", type=adapter_arg, metavar="[BASE:]NAME=PATH",
                   help="a PEFT LoRA folder (BASE: the --model name it belongs to, with several)")
    p.add_argument("--input", required=True, type=Path, help="CSV with id, original_text, rewritten_text")
    add_out(p, "submission CSV (id, rewrite_prompt)", old=("--output",))
    add_sampling_options(p)
    p.add_argument("--include-base", action="store_true", help="also sample the base model")
    p.add_argument(
        "--separator", default=" ", help="joins the combined predictions (default combination: concat)"
    )
    p.add_argument("--combination", type=Path, help="combination config JSON (from `recoverlib tune`)")
    add_embedder(p)
    p.add_argument("--fallback-prompt", default=DEFAULT_FALLBACK, help="for rows that cannot be served")
    add_template(p)
    add_samples_file(p, "JSONL of every row's cleaned samples, written as rows finish", required=False,
                     old=("--save-samples",))
    p.add_argument("--resume", action="store_true", help="continue from --samples-file")
    p.add_argument(
        "--chunk-rows",
        type=int,
        default=None,
        help="rows per generate call, samples saved after each (default: the engine's, vllm 512, hf 64;"
        " a quarter of that on ray)",
    )
    add_engine_options(p)
    add_executor_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("score", help="mean sharpened cosine (cos^3) of predictions against truths")
    p.add_argument("--predictions", required=True, type=Path, help="submission CSV (id, rewrite_prompt)")
    p.add_argument("--truth", required=True, type=Path, help="CSV with id, rewrite_prompt")
    add_embedder(p)
    p.set_defaults(func=cmd_score)
