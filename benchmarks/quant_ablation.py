"""Quantization ablation: what does each precision plan cost in quality and buy in bytes and speed, and
should the MoE router stay in full precision?

Every preset (each with its ``+router`` twin, which quantizes the router like attention) is quantized from the
bf16 model, saved, and loaded back through HFEngine. Measured per preset: audited weight bytes and effective
bits/param; quantize and load time; prefill tokens/s (long prompts, 1 new token) and decode tokens/s (short
prompts, many new tokens, eos ignored); against the bf16 model on a fixed text set (benchmarks/quality.py):
mean KL of next-token distributions, top-1 agreement, router top-2 agreement and perplexity; with
``--adapters`` and/or ``--validation``, the metric (mean cos^3, ``--embedder``) of recoverlib's predictions.
Timings: median of repeats, min and max shown.

Served through vLLM (``--vllm``, with adapters and validation rows): the same predictions scored through vLLM
where this machine's vLLM can serve the checkpoint (else the reason). The trained tiny model on the synthetic
task, bf16 against GPTQ (``plans/gptq-attn4.json``: attention in 4 bits, experts 16-bit, what a CPU with
AVX-512 but no AMX serves; ``gptq-4`` needs vLLM's int4 MoE kernel, AMX or a GPU):
    python -m benchmarks.quant_ablation --trained --adapters --vllm --repeats 1 \
        --presets gptq-4 benchmarks/plans/gptq-attn4.json --name quant_ablation_vllm
GPTQ's column order (plan ``order``; every order writes static groups, which vLLM serves): GPTQModel's
group-aware order (the default), natural order, and act-order over static groups, same calibration, against
bf16 on the trained tiny model:
    python -m benchmarks.quant_ablation --trained --adapters --repeats 1 --rows 60 \\
        --name quant_ablation_gptq_order --presets benchmarks/plans/gptq-4-order-group-aware.json \\
        benchmarks/plans/gptq-4-order-none.json benchmarks/plans/gptq-4-order-static-groups.json
and at full width (one Mixtral-8x7B-shaped layer, random weights: KL only; about 15 min and 14.4 GB a plan):
    python -m benchmarks.quant_ablation --synthetic-layers 1 --repeats 1 \\
        --name quant_ablation_gptq_order_fullwidth --presets benchmarks/plans/gptq-4-order-group-aware.json \\
        benchmarks/plans/gptq-4-order-none.json benchmarks/plans/gptq-4-order-static-groups.json
Reproduce the committed table (tiny Mixtral, its 2 adapters, the example rows; 4-7 minutes on 2 shared cores):
    python -m benchmarks.quant_ablation --threads 1 --adapters --validation examples/data/sample.csv \\
        --truth examples/data/sample_truth.csv
``--threads 1`` on a shared 2-core CPU: with 2 torch threads and other jobs running, a bf16 forward of the
tiny model took about 25x longer (OpenMP threads waiting on each other) and decode rates swung 50x between
repeats. Quick check (under 2 minutes; bf16, bnb-nf4, hqq-4 and their +router): add ``--quick``. Other models:
``--model PATH`` (an HF Mixtral folder) or ``--synthetic-layers N --synthetic-width full`` (Mixtral-8x7B
shapes, random weights, N layers, written shard by shard in the published layout; refuses what does not fit
this machine's RAM). A synthetic model is quantized by the streaming ``recoverlib quantize`` (what a user
runs at that size), so its rows have no in-memory model to check the reload against. The full-width table:
    python -m benchmarks.quant_ablation --synthetic-layers 1 --repeats 1 \
        --presets bnb-nf4 bnb-nf4+router bnb-int8 bnb-int8+router gptq-4 --name quant_ablation_fullwidth
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from benchmarks import quality as q
from benchmarks.ablation_report import write_results
from benchmarks.report import Timing, machine_info, machine_line, results_dir, time_repeats
from recoverlib.cache import cache_dir
from recoverlib.errors import RecoverlibError

ROOT = Path(__file__).resolve().parent.parent
QUICK_PRESETS = ("bnb-nf4", "bnb-nf4+router", "hqq-4", "hqq-4+router")
WIDTHS = {  # Mixtral-8x7B, and a quarter of its width (same experts and vocabulary) for CPU trials
    "full": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
    },
    "quarter": {
        "hidden_size": 1024,
        "intermediate_size": 3584,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
    },
}
# Peak RAM of a synthetic run: the bf16 reference (2 bytes/param) held throughout, beside the largest of the
# fp32 noise-floor model (4 bytes/param) and each preset's streaming quantize (the planner's peak), plus the
# libraries. One full-width layer with gptq-4 among the presets: 20.8 GB estimated, 21.5 GB measured
# (quant_ablation_fullwidth).
FIXED_BYTES = 2 * 2**30


@dataclass(frozen=True)
class AblationWorkload:
    windows: int | None = None  # text windows for quality (None: the whole text set)
    seq_len: int = 64
    repeats: int = 3
    prompts: int = 4  # prompts per timed generate call
    prefill_tokens: int = 256
    short_tokens: int = 16
    decode_tokens: int = 64
    rows: int | None = None  # validation rows scored (None: all)
    samples: int = 4  # predictions per row and adapter
    metric_tokens: int = 32  # new tokens per prediction


QUICK = AblationWorkload(
    windows=4, repeats=1, prefill_tokens=128, decode_tokens=16, rows=3, samples=1, metric_tokens=16
)


@dataclass
class Bench:
    """What every preset is measured against."""

    base: Path
    work: Path
    w: AblationWorkload
    ref: object
    windows: object
    adapters: dict[str, Path]
    rows: list
    truths: dict[str, str]
    scorer: object | None
    seed: int
    vllm: bool = False  # also score the adapters' predictions through vLLM, where it can serve the checkpoint


def synthetic_config(layers: int, width: str) -> dict:
    from recoverlib.quant.planner import MIXTRAL_8X7B

    return {**MIXTRAL_8X7B, **WIDTHS[width], "num_hidden_layers": layers}


def available_ram() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RecoverlibError("cannot read MemAvailable from /proc/meminfo")


def check_fits(cfg: dict, presets: Sequence[str] = (), available: int | None = None) -> int:
    """Bytes the benchmark needs for this config and ``presets``; raise when that exceeds the available
    RAM."""
    from recoverlib.quant.plan import PrecisionPlan, load_plan
    from recoverlib.quant.planner import plan_bytes, quantize_peak

    params = plan_bytes(cfg, PrecisionPlan(backend="bnb", name="bf16")).total_params
    quantizing = max((quantize_peak(cfg, load_plan(p)).host_bytes for p in presets), default=0)
    need = FIXED_BYTES + 2 * params + max(4 * params, quantizing)
    available = available_ram() if available is None else available
    if need > available:
        raise RecoverlibError(
            f"synthetic model of {params / 1e9:.2f} B parameters needs about {need / 2**30:.1f} GiB "
            f"RAM, {available / 2**30:.1f} GiB available: use fewer layers or a smaller width"
        )
    return need


def make_synthetic(cache: Path, layers: int, width: str, seed: int, presets: Sequence[str] = ()) -> Path:
    """A Mixtral with Mixtral-8x7B shapes (or a quarter width), ``layers`` layers and random weights, written
    one shard at a time in the published layout (benchmarks/synthetic_checkpoint.py)."""
    from benchmarks.synthetic_checkpoint import write_checkpoint

    cfg = synthetic_config(layers, width)
    folder = cache / f"synthetic-{width}-L{layers}-s{seed}-v2"
    check_fits(cfg, presets)
    if (folder / "model" / "config.json").is_file():
        return folder / "model"
    tmp = folder / "model.tmp"
    write_checkpoint(tmp, {**cfg, "head_dim": cfg["hidden_size"] // cfg["num_attention_heads"]}, seed)
    tmp.rename(folder / "model")
    return folder / "model"


def run_presets(args) -> list[str]:
    """The presets this run measures: ``--presets``, else the quick subset or all of them."""
    from recoverlib.quant.plan import PRESETS

    return list(args.presets or (QUICK_PRESETS if args.quick else PRESETS))


def prepare_model(args) -> tuple[Path, dict[str, Path], str]:
    """The bf16 model folder, the adapters to score with, and a one-line description of the model."""
    from recoverlib.tiny import adapter_paths, make_tiny, make_trained_tiny

    if args.model:
        model, label = args.model, f"{args.model}"
    elif args.trained:
        trained = make_trained_tiny(args.cache / "trained", adapters=2, seed=args.seed)
        label = "trained tiny Mixtral (make_trained_tiny: the synthetic task, 2 primed adapters)"
        return trained / "model", adapter_paths(trained), label
    elif args.synthetic_layers:
        model = make_synthetic(
            args.cache, args.synthetic_layers, args.synthetic_width, args.seed, run_presets(args)
        )
        label = (f"synthetic Mixtral ({args.synthetic_width} width, {args.synthetic_layers} layers,"
                 " random weights)")
    else:
        tiny = args.cache / "tiny"
        if not (tiny / "tiny.json").is_file():
            make_tiny(tiny, adapters=2, seed=args.seed)
        model, label = (
            tiny / "model",
            "tiny Mixtral (make_tiny: hidden 128, 2 layers, 4 experts top-2, random weights)",
        )
        if args.adapters == []:
            return model, adapter_paths(tiny), label
    if args.adapters == []:
        raise RecoverlibError(
            "--adapters with no folders means the tiny model's own; give folders for this model"
        )
    adapters = {Path(p).name: Path(p) for p in args.adapters or []}
    return Path(model), adapters, label


def _timing(prefix: str, t: Timing) -> dict:
    return {prefix: t.median, f"{prefix}_min": t.min, f"{prefix}_max": t.max}


def serve(b: Bench, path: Path) -> dict:
    """Load ``path`` through HFEngine (timed), then quality, speed and the metric."""

    from recoverlib.engines import EngineConfig
    from recoverlib.engines.hf import HFEngine

    bf16 = EngineConfig(dtype="bfloat16")  # the reference's dtype (auto would compute in float32 on a CPU)
    load, engine = time_repeats(lambda: HFEngine(path, config=bf16), b.w.repeats)
    out = _timing("load_s", load)
    try:
        out |= q.quality(b.ref, engine.model, b.windows)
        tok = engine.tokenizer
        pre = q.generation_speed(
            engine, q.prompts_of(tok, b.w.prefill_tokens, b.w.prompts), 1, b.w.repeats, b.seed
        )
        dec = q.generation_speed(engine, q.prompts_of(tok, b.w.short_tokens, b.w.prompts), b.w.decode_tokens,
                                 b.w.repeats, b.seed)
        out |= q.rate(pre["prompt_tokens"], pre["timing"], "prefill") | q.rate(
            dec["new_tokens"], dec["timing"], "decode"
        )
    finally:
        engine.close()
    if b.scorer is not None:
        with HFEngine(path, b.adapters, bf16) as engine:
            out["metric"] = q.validation_score(
                engine, b.rows, b.truths, b.scorer, b.w.samples, b.w.metric_tokens, b.seed
            )
        if b.vllm:
            out |= served_by_vllm(b, path, bf16)
    return out


def served_by_vllm(b: Bench, path: Path, config) -> dict:
    """The metric of the adapters' predictions through vLLM on this machine, or why vLLM cannot serve it
    here."""
    from recoverlib.engines.vllm import VLLMEngine
    from recoverlib.engines.vllm_support import serving_problem

    problem = serving_problem(path)
    if problem:
        return {"metric_vllm": float("nan"), "vllm": problem.split(" (this CPU")[0][:90]}
    with VLLMEngine(path, b.adapters, config) as engine:
        score = q.validation_score(engine, b.rows, b.truths, b.scorer, b.w.samples, b.w.metric_tokens, b.seed)
    return {"metric_vllm": score, "vllm": "served"}


def measure_reference(b: Bench) -> dict:
    from recoverlib.quant.audit import audit_model
    from recoverlib.quant.plan import PrecisionPlan
    from recoverlib.quant.planner import plan_bytes

    report = audit_model(b.ref)
    planned = plan_bytes(b.base, PrecisionPlan(backend="bnb", name="bf16")).total_bytes
    return {"preset": "bf16", "backend": "-", "router": "kept", "bits": report.effective_bits,
            "bytes": report.total_bytes, "planned_bytes": planned, **serve(b, b.base)}


def measure_preset(b: Bench, preset: str) -> dict:
    row = {**_quantize_streamed(b, preset), **serve(b, b.work / preset)}
    gc.collect()
    return row


def _quantize_streamed(b: Bench, preset: str) -> dict:
    """``recoverlib quantize`` into ``work/preset`` (each repeat from scratch); the row's size and time
    columns."""
    import shutil

    from recoverlib.quant.api import quantize
    from recoverlib.quant.meta import read_meta

    def once():
        shutil.rmtree(b.work / preset, ignore_errors=True)
        return quantize(b.base, preset, b.work / preset, seed=b.seed, progress=False)

    timing, path = time_repeats(once, b.w.repeats)
    audit = read_meta(path)["audit"]
    return {**_preset_columns(preset, audit["effective_bits"], audit["total_bytes"], audit["planned_bytes"]),
            **_timing("quantize_s", timing)}


def _preset_columns(preset: str, bits: float, nbytes: int, planned: int) -> dict:
    """A preset row's identity and size columns (bits/param, audited and planned weight bytes)."""
    from recoverlib.quant.plan import load_plan

    plan = load_plan(preset)
    return {
        "preset": plan.name,
        "backend": plan.backend,
        "router": "quantized" if plan.router.quantized else "kept",
        "bits": bits,
        "bytes": nbytes,
        "planned_bytes": planned,
    }


def load_validation(args, rows_limit: int | None) -> tuple[list, dict[str, str]]:
    from recoverlib.io import read_rows, read_truth

    if args.validation is None:
        return [], {}
    rows = read_rows(args.validation, with_truth=args.truth is None)
    truths = read_truth(args.truth) if args.truth else {r.id: r.rewrite_prompt for r in rows}
    missing = [r.id for r in rows if r.id not in truths]
    if missing:
        raise RecoverlibError(f"no rewrite_prompt for id(s) {', '.join(missing[:5])}")
    return rows[:rows_limit], truths


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="bf16, bnb-nf4, hqq-4 (+router), few texts, 1 repeat"
    )
    ap.add_argument("--presets", nargs="+", help="presets to run (default: all; --quick: a subset)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", type=Path, help="an HF Mixtral folder in 16 bit (default: the tiny model)")
    src.add_argument(
        "--synthetic-layers", type=int, help="build a Mixtral-shaped model with this many layers"
    )
    src.add_argument(
        "--trained",
        action="store_true",
        help="the trained tiny model, its 2 adapters and its task's validation rows",
    )
    ap.add_argument("--synthetic-width", choices=sorted(WIDTHS), default="full")
    ap.add_argument("--adapters", nargs="*", help="LoRA folders (no folders: the tiny model's own two)")
    ap.add_argument(
        "--validation", type=Path, help="Kaggle rows (with rewrite_prompt unless --truth is given)"
    )
    ap.add_argument("--truth", type=Path, help="id, rewrite_prompt for --validation")
    ap.add_argument("--embedder", default="minilm", help="the metric's embedder (sentence-t5-base on Kaggle)")
    ap.add_argument(
        "--vllm", action="store_true", help="also score through vLLM where it can serve the checkpoint"
    )
    ap.add_argument("--repeats", type=int, help="timed repeats (default 3; --quick 1)")
    ap.add_argument("--rows", type=int, help="validation rows scored (default: all; --quick 3)")
    ap.add_argument(
        "--threads", type=int, help="torch intra-op threads (default: torch's; 1 on a busy shared CPU)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default=None, help="results file stem (default quant_ablation[_quick])")
    ap.add_argument(
        "--out", type=Path, default=None, help="results folder (default benchmarks/results; --quick: scratch)"
    )
    ap.add_argument("--cache", type=Path, default=cache_dir("bench-quant"), help="models")
    args = ap.parse_args(argv)
    args.out = results_dir(args.out, args.quick)
    if args.trained and args.validation is None:
        from recoverlib.tiny import make_trained_tiny

        args.validation = make_trained_tiny(args.cache / "trained", adapters=2, seed=args.seed) / "task" / \
            "validation.csv"
    if args.adapters is not None and args.validation is None:
        ap.error("--adapters needs --validation (rows to score)")
    return args


def run(args, work: Path) -> tuple[pd.DataFrame, dict, str]:
    """Every preset's row, the bf16-vs-fp32 noise floor, and the model's description."""
    import torch

    from recoverlib.engines.hf import load_causal_lm
    from recoverlib.metric import Scorer

    w = QUICK if args.quick else AblationWorkload()
    if args.repeats:
        w = AblationWorkload(**{**w.__dict__, "repeats": args.repeats})
    if args.rows:
        w = AblationWorkload(**{**w.__dict__, "rows": args.rows})
    base, adapters, label = prepare_model(args)
    rows, truths = load_validation(args, w.rows)
    torch.manual_seed(args.seed)
    ref = load_causal_lm(base, "bfloat16")
    windows = q.text_windows(ref_tokenizer(base), w.seq_len, w.windows)
    floor = q.quality(load_causal_lm(base, "float32"), ref, windows)  # what bf16 rounding alone costs
    gc.collect()
    scorer = Scorer(args.embedder, progress=False) if rows else None
    b = Bench(base, work, w, ref, windows, adapters, rows, truths, scorer, args.seed, vllm=args.vllm)
    presets = run_presets(args)
    out = [measure_reference(b)]
    for preset in tqdm(presets, desc="presets", unit="preset"):
        out.append(measure_preset(b, preset))
        tqdm.write(f"{preset:24s} bits {out[-1]['bits']:.3f} KL {out[-1]['kl']:.5f} "
                   f"decode {out[-1]['decode_tok_s']:.0f} tok/s")
    return pd.DataFrame(out), {**floor, "workload": w, "adapters": sorted(adapters), "rows": len(rows)}, label


def ref_tokenizer(base: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    start = time.perf_counter()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info = {**machine_info(), "torch threads": str(torch.get_num_threads())}
    print(machine_line(info), flush=True)
    with tempfile.TemporaryDirectory(prefix="quant-ablation-") as tmp:
        # gptqmodel's caches stay in the temp folder
        os.environ.setdefault("HF_HOME", str(Path(tmp) / "hf_home"))
        frame, extra, label = run(args, Path(tmp))
    name = args.name or ("quant_ablation_quick" if args.quick else "quant_ablation")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    extra["peak_rss"] = peak
    command = " ".join(["python -m benchmarks.quant_ablation", *argv])
    md = write_results(frame, extra, args.out, name, info, label, command, time.perf_counter() - start)
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
