"""Question: how far from this machine's limit does each engine serve the ensemble job, phase by phase, and
what do the plugin's kernel cures close of the distance?

1. The machine's ceilings, measured here: GEMM through ``torch.nn.functional.linear`` in bf16 and float32
   (oneDNN; without bf16 instructions, float32's FMAs are what bf16 work runs on) at the job's prefill and
   decode shapes (an expert's ``w13``: hidden -> 2 x intermediate), memory read and copy bandwidth, and, at
   the same shapes, the two MoE kernels: vLLM's CPU grouped GEMM (``cpu_fused_moe``, the ISA vLLM picks
   here) and the cure's per-expert oneDNN GEMMs (``experts_forward``). int4: vLLM's int4 MoE
   kernel runs only with AMX (or zentorch); where it cannot run the table says so.
2. The job's cost from the model's config and the real prompt lengths (``benchmarks/job_cost.py``): the
   prefill of every distinct prompt at the prefill GEMM rate, each decode step at the larger of its FLOPs
   and its bytes (the weights it touches, every sequence's KV cache) at the measured bandwidth.
3. Each engine, warm, in a process of its own, on fresh texts every run: the prefill (every sequence's first
   token: ``max_tokens=1``) and the whole job (``tokens`` new tokens) on two prompt sets of equal lengths;
   decode = whole - prefill. Variants: ``vllm-defaults`` (vLLM as a user starts it for LoRA on a Mixtral,
   see ``benchmarks/ensemble_speed.py``), recoverlib's engine without each kernel cure that applies on this
   CPU (``vllm-cpu-moe-gemm`` where oneDNN has a bf16 GEMM and no AMX; ``vllm-cpu-upcast-linear`` where it has
   none, AVX2 alone), and with every cure.
   Engines run one after another (a full-width engine holds about 8 GB), each for every repeat.

Reported: each phase's median seconds and its fraction of the roofline (roofline seconds / measured
seconds: 1.0 is the machine's limit), tokens/s of the whole job; the CPU, its features and the load average
before and after. Writes ``benchmarks/results/roofline_MODEL{,_ceilings,_runs}`` (md, csv) and a png.

Reproduce (2 quiet cores; ~25 min full width, ~5 min tiny)::

    python -m benchmarks.roofline --model fullwidth
    python -m benchmarks.roofline --model tiny
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from benchmarks.ensemble_speed import DEFAULTS, KAGGLE_TOKENS, Worker, rows_of, variant_env
from benchmarks.job_cost import Job, Shapes, experts_touched, roofline
from benchmarks.report import load_line, log_path, machine_info, machine_line, pyplot, write_table
from benchmarks.serving import fullwidth_model, tiny_model
from recoverlib.cache import cache_dir
from recoverlib.engines.vllm_support import cpu_identity
from recoverlib.tiny import adapter_paths
from recoverlib.vllm_plugin import CURES, DISABLE_ENV

KERNEL_CURES = ("vllm-cpu-moe-gemm", "vllm-cpu-upcast-linear")  # the cures that change the CPU's GEMMs


PREFILL_ROWS = 1024


def variants(applying: list[str]) -> dict[str, tuple[str, list[str] | None]]:
    """label: (worker variant, plugin cures; None: the variant's own). vLLM as users start it, recoverlib
    without each kernel cure that applies on this machine, and recoverlib with every cure."""
    out: dict[str, tuple[str, list[str] | None]] = {DEFAULTS: (DEFAULTS, None)}
    for cure in applying:
        out[f"recoverlib, no {cure}"] = ("b32", [c for c in CURES if c != cure])
    out["recoverlib"] = ("b32", None)
    return out


def _timed(fn, *args, min_seconds: float = 0.5) -> float:
    """Seconds per call of ``fn(*args)`` (a warm-up call, then as many as fill ``min_seconds``, at least
    two; the median)."""
    fn(*args)
    times: list[float] = []
    while sum(times) < min_seconds or len(times) < 2:
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bandwidth(gigabytes: float = 1.0) -> dict[str, float]:
    """Memory read (a float32 sum) and copy (read + write counted) bandwidth, bytes/s."""
    import torch

    x = torch.ones(int(gigabytes * 2**30) // 4)
    y = torch.empty_like(x)
    size = x.numel() * 4
    return {"read": size / _timed(x.sum), "copy": 2 * size / _timed(y.copy_, x)}


def gemm_rate(m: int, k: int, n: int, dtype: str = "bfloat16", seed: int = 0) -> float:
    """``linear`` FLOP/s at (m x k) @ (k x n) in ``dtype``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).to(getattr(torch, dtype))
    w = torch.randn(n, k, generator=gen).to(getattr(torch, dtype))
    return 2.0 * m * k * n / _timed(torch.nn.functional.linear, x, w)


def moe_rates(s: Shapes, tokens: list[int], seed: int = 0) -> dict[tuple[str, int], float]:
    """FLOP/s of vLLM's CPU MoE kernel and of the cure's per-expert GEMMs on ``s``'s experts (random bf16
    weights, uniform top-k routing), for each token count; NaN for the cure where oneDNN has no bf16 GEMM."""
    import torch
    from vllm import _custom_ops as ops
    from vllm.platforms import current_platform

    from recoverlib.vllm_plugin.moe_gemm import ExpertGemms, experts_forward, onednn_serves

    current_platform.import_kernels()
    gen = torch.Generator().manual_seed(seed)
    w13 = torch.empty(s.experts, 2 * s.intermediate, s.hidden, dtype=torch.bfloat16)
    w2 = torch.empty(s.experts, s.hidden, s.intermediate, dtype=torch.bfloat16)
    for w in (w13, w2):
        for e in range(s.experts):
            w[e].copy_(torch.randn(w.shape[1:], generator=gen) * 0.02)
    isa = "amx" if torch.cpu._is_amx_tile_supported() else "vec"
    packed = [ops.cpu_prepack_moe_weight(w, isa) for w in (w13, w2)]
    gemms = ExpertGemms.of(w13, w2) if onednn_serves() else None
    del w13, w2
    rates = {}
    for t in tokens:
        x = torch.randn(t, s.hidden, generator=gen).bfloat16()
        logits = torch.randn(t, s.experts, generator=gen)
        weights, ids = torch.topk(torch.softmax(logits, -1), s.top_k, -1)
        weights, ids = weights.float().contiguous(), ids.int().contiguous()
        out = torch.empty_like(x)
        flops = 2.0 * t * s.top_k * s.expert_params
        rates[(f"vLLM cpu_fused_moe ({isa})", t)] = flops / _timed(
            ops.cpu_fused_moe, out, x, *packed, None, None, weights, ids, "silu", isa, False)
        rates[("cure: per-expert oneDNN", t)] = (flops / _timed(experts_forward, out, x, weights, ids, gemms)
                                                 if gemms else float("nan"))
    return rates


def ceilings(s: Shapes, job: Job, int4_moe: str) -> tuple[pd.DataFrame, dict[str, float]]:
    """The machine's measured ceilings at the job's shapes: a table, and the rates the roofline uses (per
    phase, the best GEMM measured at its shape: on a CPU without bf16 instructions, float32's FMAs are what
    bf16 work runs on, and a MoE kernel can beat torch's bf16 ``linear``)."""
    # 1,024 rows stand for the prefill (rates are flat beyond; torch bf16 linear on AVX2 takes ~20 s there)
    prefill_rows, decode_rows = min(sum(job.prompt_lengths), PREFILL_ROWS), job.sequences
    table = []
    bw = bandwidth()
    for kind, value in bw.items():
        table.append({"what": f"memory {kind}", "shape": "1 GiB", "value": value / 1e9, "unit": "GB/s"})
    best = {"prefill": 0.0, "decode": 0.0}
    for phase, m in (("prefill", prefill_rows), ("decode", decode_rows)):
        for dtype in ("bfloat16", "float32"):
            rate = gemm_rate(m, s.hidden, 2 * s.intermediate, dtype)
            best[phase] = max(best[phase], rate)
            table.append({"what": f"{dtype} GEMM, {phase} (torch linear)",
                          "shape": f"{m} x {s.hidden} x {2 * s.intermediate}", "value": rate / 1e12,
                          "unit": "TFLOP/s"})
    for (kernel, t), rate in moe_rates(s, [decode_rows, prefill_rows]).items():
        phase = "decode" if t == decode_rows else "prefill"
        best[phase] = max(best[phase], rate) if rate == rate else best[phase]  # NaN: not served here
        table.append({"what": f"bf16 MoE, {kernel}", "shape": f"{t} tokens, top-{s.top_k} of {s.experts}",
                      "value": rate / 1e12, "unit": "TFLOP/s"})
    table.append({"what": "int4 MoE (vLLM CPUExpertsInt4)", "shape": "-", "value": float("nan"),
                  "unit": int4_moe})
    return pd.DataFrame(table), {**best, "read": bw["read"]}


def paired_prompts(tokenizer, rows: int, seed: int, tokens: tuple[int, int] = KAGGLE_TOKENS
                   ) -> tuple[list[str], list[str]]:
    """Two sets of ``rows`` fresh recovery prompts with the same token lengths (drawn from ``tokens``,
    Kaggle's range by default): one for the prefill run, one for the whole job (no prefix in common)."""
    from recoverlib.prompt import RecoveryTemplate

    tpl = RecoveryTemplate().for_tokenizer(tokenizer)
    rng = random.Random(seed)
    lengths = [rng.randint(*tokens) for _ in range(rows)]
    sets = []
    for tag in (seed, seed + 500_000):
        pairs = rows_of("kaggle", rows, tag)
        sets.append([tpl.render_fitted(tokenizer, o, r, n)[0]
                     for (o, r), n in zip(pairs, lengths, strict=True)])
    return sets[0], sets[1]


def measure(args, model: Path, adapters: dict, log: Path, tokenizer, top_of) -> tuple[list[dict], list[int]]:
    """Every variant's prefill and whole-job seconds per repeat beside that repeat's roofline (``top_of``:
    prompt lengths -> :class:`Roofline`), and the last whole job's prompt lengths."""
    rows, lengths = [], []
    names = sorted(adapters)
    for label, (variant, cures) in tqdm(variants(args.cures).items(), desc="engines", disable=None):
        env = {**variant_env(variant), **({DISABLE_ENV: ",".join(cures)} if cures is not None else {})}
        worker = Worker(variant, model, adapters, log, env)
        try:
            # an untimed job of the timed jobs' shape first (its own texts): the engine's first-call costs
            # (new batch shapes included) stay out of the timings. With a one-prompt warm-up the first timed
            # prefill of the tiny model took longer than the whole job after it (CI, AMD EPYC).
            warm = paired_prompts(tokenizer, args.rows, 1, args.prompt_tokens)
            for ps, t in zip(warm, (1, args.tokens), strict=True):
                worker.run({"prompts": dict.fromkeys(names, ps), "n": args.samples, "tokens": t, "seed": 0})
            for repeat in range(1, args.repeats + 1):
                # every engine the same texts (each has its own prefix cache), fresh for every repeat
                first, whole = paired_prompts(tokenizer, args.rows, 7919 * repeat, args.prompt_tokens)
                timings = [worker.run({"prompts": dict.fromkeys(names, ps), "n": args.samples, "tokens": t,
                                       "seed": repeat}) for ps, t in ((first, 1), (whole, args.tokens))]
                lengths = [len(tokenizer(p)["input_ids"]) for p in whole] * len(names)
                top = top_of(lengths)
                rows.append({"variant": label, "repeat": repeat, "prefill_s": timings[0]["seconds"],
                             "whole_s": timings[1]["seconds"], "tokens": timings[1]["tokens"],
                             "prompt_tokens": sum(lengths), "roofline_prefill_s": top.prefill_s,
                             "roofline_decode_s": top.decode_s, "load_1min": os.getloadavg()[0]})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            worker.close()
    return rows, lengths


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Medians per variant beside the roofline; each phase's fraction of it is the median over repeats of
    (that repeat's roofline seconds / its measured seconds): every repeat has prompts of its own."""
    runs = runs.assign(decode_s=runs["whole_s"] - runs["prefill_s"],
                       roofline_whole_s=runs["roofline_prefill_s"] + runs["roofline_decode_s"])
    out = []
    for label, part in runs.groupby("variant", sort=False):
        whole = part["whole_s"].median()
        out.append({"variant": label, "prefill_s": part["prefill_s"].median(),
                    "decode_s": part["decode_s"].median(), "whole_s": whole,
                    "tok_per_s": part["tokens"].median() / whole,
                    **{f"{ph}_of_roofline": (part[f"roofline_{ph}_s"] / part[f"{ph}_s"]).median()
                       for ph in ("prefill", "decode", "whole")},
                    "repeats": len(part)})
    phases = ["roofline_prefill_s", "roofline_decode_s", "roofline_whole_s"]
    top = runs.groupby("repeat")[phases].first().median()
    out.append({"variant": "roofline", "prefill_s": top["roofline_prefill_s"],
                "decode_s": top["roofline_decode_s"], "whole_s": top["roofline_whole_s"],
                "tok_per_s": runs["tokens"].median() / top["roofline_whole_s"], "prefill_of_roofline": 1.0,
                "decode_of_roofline": 1.0, "whole_of_roofline": 1.0, "repeats": 0})
    return pd.DataFrame(out)


def plot(frame: pd.DataFrame, path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = list(frame["variant"])
    ax.barh(labels, frame["prefill_s"], label="prefill (first token of every sequence)")
    ax.barh(labels, frame["decode_s"], left=frame["prefill_s"], label="decode (the other tokens)")
    for i, rec in enumerate(frame.itertuples(index=False)):
        ax.text(rec.whole_s, i, f"  {rec.whole_of_roofline:.2f} of roofline", va="center", fontsize=8)
    ax.set_xlabel("seconds for the whole job (median)")
    ax.set_title(title, fontsize=10)
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xlim(0, frame["whole_s"].max() * 1.35)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("tiny", "fullwidth"), default="fullwidth")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompt-tokens", type=int, nargs=2, default=KAGGLE_TOKENS, metavar=("MIN", "MAX"),
                   help="recovery prompt lengths, drawn uniformly (default: Kaggle's %(default)s)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--name", default=None, help="results file stem (default roofline_MODEL)")
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    from recoverlib.engines.vllm_support import probe_vllm_kernels
    from recoverlib.vllm_plugin.moe_gemm import onednn_serves

    cache = cache_dir("bench-serving")
    folder = fullwidth_model(cache) if args.model == "fullwidth" else tiny_model(cache / "tiny4", adapters=4)
    model = folder / "model"
    adapters = dict(sorted(adapter_paths(folder).items())[:4])
    tokenizer = AutoTokenizer.from_pretrained(model)
    shapes = Shapes.from_config(json.loads((model / "config.json").read_text()))
    load_before, start = os.getloadavg(), time.perf_counter()
    kernels = probe_vllm_kernels()
    amx, onednn = "amx_tile" in kernels.cpu_features, onednn_serves()
    args.cures = [c for c, ok in zip(KERNEL_CURES, (onednn and not amx, not onednn), strict=True) if ok]
    planned = Job(tuple(len(tokenizer(q)["input_ids"])
                        for q in paired_prompts(tokenizer, args.rows, 1, args.prompt_tokens)[1])
                  * len(adapters), args.samples, args.tokens, 16)
    table, rates = ceilings(shapes, planned, "runs here" if kernels.int4_moe else "no kernel on this CPU"
                            " (needs AMX or zentorch)")
    def top_of(lengths: list[int]):
        return roofline(shapes, Job(tuple(lengths), args.samples, args.tokens, 16), rates["prefill"],
                        rates["decode"], rates["read"])

    runs, lengths = measure(args, model, adapters, log_path(f"roofline_{args.model}"), tokenizer, top_of)
    job = Job(tuple(lengths), args.samples, args.tokens, 16)
    top = top_of(lengths)
    frame = summarize(pd.DataFrame(runs))
    name = args.name or f"roofline_{args.model}"
    cpu, touched = cpu_identity()[0], experts_touched(shapes, job.sequences)
    notes = [
        f"Machine: {machine_line(machine_info())}; {kernels.describe()}",
        f"{load_line(load_before, os.getloadavg())}; {time.perf_counter() - start:.0f} s in all",
        f"Model: {folder.name} ({shapes}); job: {args.rows} rows x {len(adapters)} rank-16 adapters x"
        f" {args.samples} samples x {args.tokens} tokens = {job.generated} tokens, {sum(lengths)} prompt"
        f" tokens in {len(lengths)} distinct prefills; {args.repeats} repeats per engine (after a small"
        " warm-up job), fresh texts every run",
        f"Roofline (the last repeat's prompts): prefill {top.prefill.flops / 1e12:.2f} TFLOP at"
        f" {rates['prefill'] / 1e12:.3f} TFLOP/s;"
        f" {args.tokens - 1} decode steps, {top.decode.bytes / 1e9:.1f} GB read ({touched:.2f} of"
        f" {shapes.experts} experts a step) at {rates['read'] / 1e9:.1f} GB/s,"
        f" {top.decode.flops / 1e12:.2f} TFLOP at {rates['decode'] / 1e12:.3f} TFLOP/s",
        "Fractions: roofline seconds / measured seconds of that phase (1.0: the machine's limit)",
        f"Kernel cures that apply on this CPU: {', '.join(args.cures) or 'none'} (a row without each);"
        f" standing aside: {', '.join(c for c in KERNEL_CURES if c not in args.cures) or 'none'}",
        "Command: python -m benchmarks.roofline " + " ".join(argv if argv is not None else sys.argv[1:]),
    ]
    write_table(table, args.out, f"{name}_ceilings", f"This machine's ceilings ({cpu})", notes[:2])
    write_table(frame, args.out, name, f"The ensemble job against the roofline ({cpu})", notes)
    pd.DataFrame(runs).to_csv(args.out / f"{name}_runs.csv", index=False)
    plot(frame, args.out / f"{name}.png", f"Ensemble job vs roofline, {args.model} ({cpu})")
    print((args.out / f"{name}_ceilings.md").read_text())
    print((args.out / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
