"""Serving benchmark: which engine and LoRA mode generates a multi-adapter ensemble fastest?

Model: the trained tiny Mixtral (``make_trained_tiny``, 4 trained adapters; its next-token distributions are
peaked like a real LM's) or, with ``--model random``, the random-weights tiny Mixtral (8 random adapters;
nearly flat distributions, so top-p keeps ~1,400 of 2,048 tokens and the sampler's sort cannot be skipped).
The same workload (R rows x A adapters x N samples x T new tokens, exactly T: eos ignored) goes through:
vLLM with adapters as LoRA in one batch (``dynamic``), vLLM with merged weights swapped per adapter
(``merged``), vLLM on the base model alone with the same number of requests (the ceiling), and transformers +
PEFT switching adapters (``hf``, the seed's way). Engines are warm; generation only; median of repeats (min
and max shown), for A = 1, 2, 4 (trained; it has 4 adapters) or 1, 2, 4, 8 (random). Also: n samples in one
request vs n requests, and vLLM engine start in-process vs multiprocess.

Reproduce the committed tables (about 9 and 11 minutes on a 2-core CPU, trained model cached):
    .venv/bin/python -m benchmarks.serving --whole-command                  # serving.md (trained model)
    .venv/bin/python -m benchmarks.serving --model random --whole-command   # serving_random.md
Full width (``--model fullwidth``): Mixtral-8x7B's shapes (hidden 4096, intermediate 14336, 8 experts, vocab
32000, 32 heads, 8 KV heads) with one layer and seeded random bf16 weights, 4 rank-16 attention adapters; a
small job (4 rows x 4 adapters x 4 samples x 16 tokens, prompts cut to 64 tokens), one run; base-only prompts
carry a copy number so vLLM's prefix cache cannot skip their prefill:
    nice .venv/bin/python -m benchmarks.serving --model fullwidth               # serving_fullwidth.md
Quick check (under 2 minutes): ``--quick``. Whole-command timing (``recoverlib predict`` end to end, imports,
start-up and merging into an empty cache included, ``--lora-mode auto`` vs ``--engine hf``, 512 rows x 4
adapters x 4 samples x at most 32 tokens; eos ends a sample early, as in real use): ``--whole-command``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd

from benchmarks.report import (
    load_line,
    machine_info,
    machine_line,
    markdown_table,
    pyplot,
    results_dir,
    time_repeats,
    write_table,
)
from recoverlib.cache import cache_dir
from recoverlib.engines import EngineConfig, SamplingConfig, make_engine
from recoverlib.io import read_rows
from recoverlib.prompt import RecoveryTemplate
from recoverlib.runtime import relaunch_with_allocator
from recoverlib.tiny import adapter_paths, make_tiny
from recoverlib.tiny.model import TinySpec, make_adapter, mixtral_config, train_tokenizer
from recoverlib.tiny.trained import make_trained_tiny

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("recoverlib")


@dataclass(frozen=True)
class ServingWorkload:
    rows: int = 48
    adapter_counts: tuple[int, ...] = (1, 2, 4, 8)
    samples: int = 4
    new_tokens: int = 32
    repeats: int = 2
    prompt_tokens: int | None = None  # cut every prompt to this many tokens (None: whole prompts)
    small_warmup: bool = False  # warm up on one short request instead of a full-size pass


QUICK = ServingWorkload(rows=8, adapter_counts=(1, 2), samples=2, new_tokens=8, repeats=1)
# Full width on 2 cores: about 1 GFLOP per token, so a small job (prefill and decode both matrix-bound).
FULLWIDTH_WORK = ServingWorkload(
    rows=4, adapter_counts=(4,), samples=4, new_tokens=16, repeats=1, prompt_tokens=64, small_warmup=True
)


def tiny_model(cache: Path, adapters: int) -> Path:
    meta = cache / "tiny.json"
    if not (meta.is_file() and json.loads(meta.read_text()).get("adapters") == adapters):
        make_tiny(cache, adapters=adapters, seed=0)
    return cache


# Mixtral-8x7B's shapes at full width, one layer (1.7 B parameters, 3.4 GB in bf16), four rank-16 adapters.
FULLWIDTH = TinySpec(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=1,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, num_local_experts=8,
                     num_experts_per_tok=2, max_position_embeddings=1024, adapter_ranks=(16, 16, 16, 16))


def fullwidth_model(cache: Path, seed: int = 0) -> Path:
    """A Mixtral-shaped model at full width with seeded random bf16 weights and 4 rank-16 attention adapters.

    Built on the meta device and filled in bf16 one slice at a time, so it never exists in fp32 (6.9 GB). The
    tokenizer is the tiny one (its ids are a subset of the 32,000; ids beyond it decode to nothing).
    """
    import torch
    from transformers import MixtralForCausalLM

    out = cache / "fullwidth"
    if (out / "tiny.json").is_file():
        return out
    tokenizer = train_tokenizer(2048)
    with torch.device("meta"):
        model = MixtralForCausalLM(mixtral_config(FULLWIDTH, tokenizer))
    model = model.to(torch.bfloat16).to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            rows = p.view(-1, p.shape[-1])
            for start in range(0, rows.shape[0], 4096):
                chunk = rows[start:start + 4096]
                chunk.copy_(
                    torch.ones(chunk.shape)
                    if "norm" in name
                    else torch.randn(chunk.shape, generator=gen) * 0.02
                )
    model.save_pretrained(out / "model", safe_serialization=True)
    tokenizer.save_pretrained(out / "model")
    for k, rank in enumerate(FULLWIDTH.adapter_ranks):
        make_adapter(model, out / "adapters" / f"full-{chr(ord('a') + k)}", rank, seed=seed * 1000 + k + 1)
    (out / "tiny.json").write_text(json.dumps({"seed": seed, **asdict(FULLWIDTH)}, indent=1))
    return out


MODEL_LABELS = {"trained": "trained tiny Mixtral", "random": "random tiny Mixtral",
                "fullwidth": "full-width Mixtral shapes, 1 layer, random weights"}
MODELS = {  # name: (adapter counts measured, folder builder)
    "trained": ((1, 2, 4), lambda cache: make_trained_tiny(cache / "trained", adapters=4, seed=0)),
    "random": ((1, 2, 4, 8), lambda cache: tiny_model(cache, adapters=8)),
    "fullwidth": ((4,), fullwidth_model),
}


def prompts_for(engine, rows: int, prompt_tokens: int | None = None) -> list[str]:
    sample = read_rows(ROOT / "examples" / "data" / "sample.csv")
    tpl = RecoveryTemplate()
    prompts = [
        tpl.render(engine.tokenizer, r.original_text, r.rewritten_text) for r in (sample * rows)[:rows]
    ]
    if prompt_tokens:
        tok = engine.tokenizer
        ids = tok(prompts, add_special_tokens=False)["input_ids"]
        prompts = [tok.decode(x[:prompt_tokens]) for x in ids]
    return prompts


def distinct_copies(prompts: list[str], count: int) -> list[str]:
    """``count`` copies of ``prompts`` that share no prefix (a leading copy number): the base-only run then
    computes every prefill, as the adapters' runs must (LoRA requests never share vLLM's prefix cache)."""
    return [f"{k} {p}" for k in range(count) for p in prompts]


def _sampling(w: ServingWorkload, n: int | None = None) -> SamplingConfig:
    return SamplingConfig(
        samples=n or w.samples, temperature=0.7, max_new_tokens=w.new_tokens, seed=0, ignore_eos=True
    )


def measure_engine(label: str, engine_name: str, mode: str, tiny: Path, w: ServingWorkload) -> list[dict]:
    """Tokens/s for each adapter count through one warm engine."""
    adapters = adapter_paths(tiny)
    use = {} if mode == "base" else adapters
    cfg = EngineConfig(lora_mode="dynamic" if mode == "base" else mode, merge_cache=str(tiny / "merge-cache"))
    start = time.perf_counter()
    engine = make_engine(engine_name, tiny / "model", use, cfg)
    startup = time.perf_counter() - start
    prompts = prompts_for(engine, w.rows, w.prompt_tokens)
    first = sorted(adapters)[:1] if use else [None]
    warm = replace(w, new_tokens=2, samples=1) if w.small_warmup else w
    engine.generate(dict.fromkeys(first, prompts[:1] if w.small_warmup else prompts), _sampling(warm), first)
    out = []
    for count in w.adapter_counts:
        names = sorted(adapters)[:count]
        if mode == "base":  # same number of requests, all on the base model
            copies = distinct_copies(prompts, count) if w.prompt_tokens else prompts * count
            requests, order = {None: copies}, [None]
        else:
            requests, order = dict.fromkeys(names, prompts), names
        timing, _ = time_repeats(lambda r=requests, o=order: engine.generate(r, _sampling(w), o), w.repeats)
        tokens = w.rows * count * w.samples * w.new_tokens
        out.append({"engine": label, "adapters": count, "tokens": tokens, "seconds": timing.median,
                    "tok_per_s": tokens / timing.median, "tok_per_s_min": tokens / timing.max,
                    "tok_per_s_max": tokens / timing.min, "repeats": timing.runs, "engine_start_s": startup})
        print(
            f"{label:14s} A={count}: {tokens / timing.median:8.0f} tok/s ({timing.median:.2f} s)", flush=True
        )
    engine.close()
    gc.collect()
    return out


def n_sampling(tiny: Path, w: ServingWorkload) -> list[dict]:
    """n samples in one request vs n separate requests (vLLM, base model)."""
    engine = make_engine("vllm", tiny / "model", {}, EngineConfig())
    prompts = prompts_for(engine, w.rows)
    tokens = w.rows * w.samples * w.new_tokens
    one, _ = time_repeats(lambda: engine.generate(prompts, _sampling(w), [None]), w.repeats)
    many, _ = time_repeats(lambda: engine.generate(prompts * w.samples, _sampling(w, n=1), [None]), w.repeats)
    engine.close()
    return [
        {"case": f"n={w.samples} in one request", "seconds": one.median, "tok_per_s": tokens / one.median},
        {"case": f"{w.samples} requests of n=1", "seconds": many.median, "tok_per_s": tokens / many.median},
    ]


def engine_start(tiny: Path, repeats: int, multiprocess: bool = True) -> list[dict]:
    """Start time of a vLLM engine on the tiny model, in-process vs the default multiprocess engine core."""
    rows = []
    for in_process in (True, False) if multiprocess else (True,):
        def start(p=in_process):
            make_engine("vllm", tiny / "model", {}, EngineConfig(multiprocess=not p)).close()

        timing, _ = time_repeats(start, repeats)
        rows.append(
            {
                "case": "in-process" if in_process else "multiprocess (vLLM default)",
                "seconds": timing.median,
                "min": timing.min,
                "max": timing.max,
            }
        )
    return rows


def whole_command(tiny: Path, out: Path, rows: int = 512) -> list[dict]:
    """``recoverlib predict`` end to end (imports and start-up included), auto vs hf, one run each."""
    src = read_rows(ROOT / "examples" / "data" / "sample.csv")
    frame = pd.DataFrame(
        [
            {"id": f"r{i}", "original_text": r.original_text, "rewritten_text": r.rewritten_text}
            for i, r in enumerate((src * rows)[:rows])
        ]
    )
    csv = out / "whole_command_input.csv"
    frame.to_csv(csv, index=False)
    adapters = [f"--adapter={n}={p}" for n, p in sorted(adapter_paths(tiny).items())[:4]]
    results = []
    for label, extra in (("vllm --lora-mode auto", ["--engine", "vllm", "--lora-mode", "auto"]),
                         ("hf (transformers + PEFT)", ["--engine", "hf", "--lora-mode", "dynamic"])):
        cmd = [sys.executable, "-m", "recoverlib.cli", "predict", "--model", str(tiny / "model"), *adapters,
               "--samples", "4", "--max-new-tokens", "32", "--input", str(csv), "--out", str(out / "wc.csv"),
               "--merge-cache", str(out / "wc-merge-cache"), *extra]
        shutil.rmtree(out / "wc-merge-cache", ignore_errors=True)  # merging is part of a first run
        start = time.perf_counter()
        subprocess.run(
            cmd, check=True, capture_output=True, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}
        )
        results.append({"case": label, "command": "recoverlib predict " + " ".join(extra), "rows": rows,
                        "seconds": time.perf_counter() - start})
        print(results[-1], flush=True)
    csv.unlink()
    (out / "wc.csv").unlink(missing_ok=True)
    shutil.rmtree(out / "wc-merge-cache", ignore_errors=True)
    return results


def plot(frame: pd.DataFrame, path: Path, title: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if frame["adapters"].nunique() == 1:  # one ensemble size: a bar per engine
        ax.barh(frame["engine"], frame["tok_per_s"])
        ax.set_xlabel(f"generated tokens / s ({frame['adapters'].iloc[0]} adapters)")
        ax.invert_yaxis()
        ax.set_title(textwrap.fill(title, 90), fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return
    for label, part in frame.groupby("engine", sort=False):
        yerr = [part["tok_per_s"] - part["tok_per_s_min"], part["tok_per_s_max"] - part["tok_per_s"]]
        ax.errorbar(part["adapters"], part["tok_per_s"], yerr=yerr, marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(frame["adapters"].unique()), [str(a) for a in sorted(frame["adapters"].unique())])
    ax.set_xlabel("adapters in the ensemble")
    ax.set_ylabel("generated tokens / s")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small workload (under 2 minutes)")
    ap.add_argument("--model", choices=sorted(MODELS), default=None,
                    help="tiny Mixtral to serve (default trained; --quick: random, which needs no training)")
    ap.add_argument("--whole-command", action="store_true", help="also time recoverlib predict end to end")
    ap.add_argument("--whole-command-rows", type=int, default=512, help="rows for --whole-command")
    ap.add_argument("--rows", type=int, default=None, help="rows per adapter (default 48; --quick 8)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 2; --quick 1)")
    ap.add_argument(
        "--out", type=Path, default=None, help="results folder (default benchmarks/results; --quick: scratch)"
    )
    ap.add_argument("--cache", type=Path, default=cache_dir("bench-serving"), help="models")
    args = ap.parse_args(argv)
    if argv is None:  # vLLM runs as recoverlib's commands run it: tcmalloc and libiomp5 preloaded
        relaunch_with_allocator([sys.executable, "-m", "benchmarks.serving", *sys.argv[1:]])
    load_before = os.getloadavg()
    args.model = args.model or ("random" if args.quick else "trained")
    args.out = results_dir(args.out, args.quick)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    counts, build = MODELS[args.model]
    w = (
        QUICK
        if args.quick
        else FULLWIDTH_WORK
        if args.model == "fullwidth"
        else ServingWorkload(adapter_counts=counts)
    )
    w = replace(w, rows=args.rows or w.rows, repeats=args.repeats or w.repeats)
    tiny = build(args.cache)
    info = machine_info()
    print(machine_line(info), flush=True)
    rows = []
    for label, engine, mode in (
        ("vllm base only", "vllm", "base"),
        ("vllm dynamic", "vllm", "dynamic"),
        ("vllm merged", "vllm", "merged"),
        ("hf (transformers + PEFT)", "hf", "dynamic"),
    ):
        rows += measure_engine(label, engine, mode, tiny, w)
    frame = pd.DataFrame(rows)
    hf = frame[frame.engine == "hf (transformers + PEFT)"].set_index("adapters")["tok_per_s"]
    base = frame[frame.engine == "vllm base only"].set_index("adapters")["tok_per_s"]
    frame["x_hf"] = [r.tok_per_s / hf[r.adapters] for r in frame.itertuples()]
    frame["x_base"] = [r.tok_per_s / base[r.adapters] for r in frame.itertuples()]
    # The multiprocess start alone is about 30-45 s: left out of --quick; at full width every extra is
    # minutes.
    extra = pd.DataFrame([] if args.model == "fullwidth" else
                         n_sampling(tiny, w) + engine_start(tiny, 1 if args.quick else 2, not args.quick))
    if args.whole_command:
        extra = pd.concat([extra, pd.DataFrame(whole_command(tiny, args.out, args.whole_command_rows))],
                          ignore_index=True)
    name = (
        "serving_quick" if args.quick else ("serving" if args.model == "trained" else f"serving_{args.model}")
    )
    notes = [
        f"Machine: {machine_line(info)}",
        load_line(load_before, os.getloadavg()),
        f"Workload: {w.rows} rows x A adapters x {w.samples} samples x {w.new_tokens} new tokens (eos "
        "ignored), "
        f"{MODEL_LABELS[args.model]} "
        f"(bf16){f', prompts cut to {w.prompt_tokens} tokens' if w.prompt_tokens else ''}"
        f", top_p 0.95, temperature 0.7, engines warm, median of {w.repeats} "
        "(tok/s min-max shown in csv).",
        "x_hf: tokens/s relative to transformers + PEFT; x_base: relative to vLLM on the base model alone.",
        "Command: .venv/bin/python -m benchmarks.serving "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}",
    ]
    md = write_table(frame.round(3), args.out, name, "Serving: engines and LoRA modes", notes)
    if len(extra):
        with open(md, "a") as fh:
            fh.write("\n## Other measurements\n\n")
            fh.write(markdown_table(extra.round(3).fillna("")) + "\n")
        extra.to_csv(args.out / f"{name}_other.csv", index=False)
    plot(
        frame,
        args.out / f"{name}.png",
        f"{MODEL_LABELS[args.model]}, {w.rows} rows x A x {w.samples} samples x "
        f"{w.new_tokens} tokens; {info['cpu']}",
    )
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
