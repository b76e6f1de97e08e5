"""Question: at Mixtral's full width, how fast does vLLM serve a GPTQ base from ``recoverlib quantize`` with
four LoRA adapters, against the bf16 base, from a handful of sequences (decoding reads the weights) to
hundreds (it computes), and with how much memory?

The full-width Mixtral-shaped model (hidden 4096, 8 experts of 14336, 32 heads, 8 KV heads, 1 layer, random
bf16 weights, published layout, 4 rank-16 attention adapters) is quantized by ``recoverlib quantize`` with
each GPTQ plan asked for, then every checkpoint this machine's vLLM can serve (the same rule ``predict``
uses; the others are listed with the reason) runs the same job in a process of its own: R rows x 4 adapters x
4 samples x 16 tokens (eos ignored; R x 16 sequences), Kaggle-like prompts of 100-600 tokens, fresh for
every R. Reported per base and R: generated tokens/s, against bf16, and the process's peak RSS; the CPU's
model and features and the load average before and after.

Reproduce (about 30 minutes on 2 quiet cores; gptq-4 needs vLLM's int4 MoE kernel: AMX or a GPU):
    python -m benchmarks.serving_quantized --plans benchmarks/plans/gptq-attn4.json gptq-4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from benchmarks.ensemble_speed import recovery_prompts
from benchmarks.report import load_line, log_path, machine_info, machine_line, pyplot, write_table
from benchmarks.serving import fullwidth_model
from recoverlib.cache import cache_dir
from recoverlib.engines.vllm_support import (
    ServedWeights,
    cpu_identity,
    probe_vllm_kernels,
    serving_problem,
    vllm_problem,
)
from recoverlib.quant.plan import load_plan
from recoverlib.runtime import allocator_env
from recoverlib.tiny import adapter_paths


def serve_sizes(model: str, adapters: dict, rows: list[int], tokens: int) -> None:
    """Worker: one engine on ``model``; a JSON line per row count, then the peak RSS."""
    from recoverlib.engines import EngineConfig, SamplingConfig
    from recoverlib.engines.vllm import VLLMEngine
    from recoverlib.prompt import RecoveryTemplate

    engine = VLLMEngine(model, adapters, EngineConfig(lora_mode="dynamic", kv_cache_gib=4, dtype="bfloat16"))
    tpl = RecoveryTemplate().for_tokenizer(engine.tokenizer)
    names = sorted(adapters)
    sampling = SamplingConfig(samples=4, temperature=0.7, max_new_tokens=tokens, ignore_eos=True, seed=0)
    engine.generate(
        [tpl.render(engine.tokenizer, "a b", "A B")],
        SamplingConfig(max_new_tokens=2, temperature=0),
        names[:1],
    )  # warm-up
    for count in rows:
        prompts = recovery_prompts(engine.tokenizer, "kaggle", count, 7000 + count)  # 100-600 tokens
        start = time.perf_counter()
        got = engine.generate(dict.fromkeys(names, prompts), sampling, names)
        seconds = time.perf_counter() - start
        generated = sum(len(s) for per in got.values() for s in per) * tokens
        print(json.dumps({"rows": count, "sequences": count * len(names) * 4, "seconds": seconds,
                          "tok_per_s": generated / seconds}), flush=True)
    print(json.dumps({"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}), flush=True)


def measure(label: str, folder: Path, adapters: dict, args, log: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "benchmarks.serving_quantized", "--worker", str(folder), "--worker-adapters",
           json.dumps({k: str(v) for k, v in adapters.items()}), "--rows", *map(str, args.rows),
           "--tokens", str(args.tokens)]
    env = {
        **os.environ,
        **allocator_env(),
        "VLLM_LOGGING_STREAM": "ext://sys.stderr",
        "VLLM_CPU_KVCACHE_SPACE": "4",
    }
    with open(log, "a") as err:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode or not lines:
        raise RuntimeError(f"{label} failed ({out.returncode}); see {log}")
    peak = lines[-1]["peak_rss_gb"]
    return [{"base": label, **x, "peak_rss_gb": peak} for x in lines[:-1]]


def quantized(base: Path, plan: str, cache: Path) -> Path:
    from recoverlib.quant.api import quantize

    out = cache / f"q-{load_plan(plan).name}"
    if not (out / "recoverlib_quant.json").is_file():
        quantize(base, plan, out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plans", nargs="+", default=["benchmarks/plans/gptq-attn4.json", "gptq-4"])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 32])
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-adapters", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return serve_sizes(args.worker, json.loads(args.worker_adapters), args.rows, args.tokens)
    cache = cache_dir("bench-serving")
    folder = fullwidth_model(cache)
    adapters = adapter_paths(folder)
    out_dir = args.out or Path(__file__).resolve().parent / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    log = log_path("serving_quantized")
    load_before, start = os.getloadavg(), time.perf_counter()
    bases, skipped = {"bf16": folder / "model"}, []
    kernels = probe_vllm_kernels()
    for plan in args.plans:
        name = load_plan(plan).name
        # asked of the plan first: a checkpoint this machine cannot serve is not worth quantizing (gptq-4 at
        # full width: 15 minutes and 14 GB here); the written checkpoint is asked again, as predict asks
        problem = vllm_problem(ServedWeights.from_plan(load_plan(plan), name), kernels)
        q = None if problem else quantized(folder / "model", plan, cache)
        problem = problem or serving_problem(q)
        if problem:
            skipped.append(f"{name}: not served here: {problem}")
        else:
            bases[name] = q
    rows = [r for label, path in bases.items() for r in measure(label, path, adapters, args, log)]
    load_after = os.getloadavg()
    frame = pd.DataFrame(rows)
    bf16 = frame[frame["base"] == "bf16"].set_index("rows")["tok_per_s"]
    frame["x_bf16"] = [t / bf16[r] for r, t in zip(frame["rows"], frame["tok_per_s"], strict=True)]
    cpu = cpu_identity()[0]
    notes = [
        f"Machine: {machine_line(machine_info())}",
        f"{load_line(load_before, load_after)}; {time.perf_counter() - start:.0f} s in all",
        "Model: full-width Mixtral shapes, 1 layer, random bf16 weights, 4 rank-16 attention adapters; rows"
        f" of Kaggle-like prompts of 100-600 tokens x 4 adapters x 4 samples x {args.tokens} tokens, fresh"
        " texts per row count",
        *skipped,
        "Command: python -m benchmarks.serving_quantized " + " ".join(argv or sys.argv[1:]),
    ]
    write_table(
        frame, out_dir, "serving_quantized", f"GPTQ vs bf16 through vLLM at full width ({cpu})", notes
    )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, part in frame.groupby("base"):
        ax.plot(part["sequences"], part["tok_per_s"], "o-", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("sequences in the job")
    ax.set_ylabel("generated tokens / s")
    ax.set_title("vLLM, 4 adapters, full-width layer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "serving_quantized.png", dpi=120)
    print((out_dir / "serving_quantized.md").read_text())


if __name__ == "__main__":
    main()
