"""Question: on the same job and weights, how fast is llama.cpp (what people run Mixtral with on a CPU)
against recoverlib's vLLM engine, per phase (prefill, decode)?

The job: the base model (no adapters), R distinct recovery prompts of Kaggle-like length (each fitted to
100-600 tokens, ``ensemble_speed.recovery_prompts``), n sequences per prompt, exactly T new tokens each (eos
ignored), temperature 0.7, top-p 0.95, 2 threads, fresh texts every timed run (the same texts for every engine
of a run). Engines, one at a time, each warmed up on a small job first:

- ``llama.cpp bf16`` / ``q4_0`` / ``q4_k_m``: llama-cpp-python's low-level API
  (``benchmarks.llama_cpp_batch``): the checkpoint converted by llama.cpp's ``convert_hf_to_gguf.py``
  (bf16) and quantized by its quantizer; prompts packed into 2048-token batches (llama.cpp's default
  512-token micro-batches), each prompt's KV shared by its n sequences (``llama_memory_seq_cp``, unified
  KV), the n*R sequences decoded in one batch per step. Weight repacking (``use_extra_bufts``) is
  llama.cpp's default except on AMX CPUs, where the Q4_0 load segfaulted (--repack to choose). Prefill
  (prompts in, first tokens sampled) and decode are timed directly.
- ``recoverlib vLLM bf16``: recoverlib's ``VLLMEngine`` (32-token KV blocks, all plugin cures, allocators
  preloaded) through ``ensemble_speed``'s warm ``Worker``, no adapters loaded. Its prefill is a run of the
  same prompts (a leading marker so no prefix is cached) with one new token; decode = whole run - that.

The ensemble with LoRA (4 rank-16 attention adapters) is not measured on llama.cpp: 0.3.36's llama.cpp sets
LoRA adapters on a whole context (``llama_set_adapters_lora``), not per sequence, and its server batches only
slots with equal adapter sets (``server_slot::can_batch_with``), so an ensemble there is one pass per adapter,
not one batch.

Getting llama.cpp (a source build, 25 min on 2 shared cores here; kept out of the project's locked .venv, and
``--no-deps`` so nothing in the target folder shadows the venv's numpy; the sdist also holds the converter,
which imports the ``gguf`` package from its own ``gguf-py`` folder)::

    .venv/bin/python -m pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 \\
        -d /work/llamacpp-src
    tar xzf /work/llamacpp-src/llama_cpp_python-0.3.36.tar.gz -C /work/llamacpp-src
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF" .venv/bin/python -m pip install --no-deps \\
        --target /work/llamacpp-env /work/llamacpp-src/llama_cpp_python-0.3.36.tar.gz diskcache

Reproduce (GGUFs cached under ~/.cache/recoverlib/bench-llama-cpp; results in benchmarks/results)::

    export PYTHONPATH=$PWD:/work/llamacpp-env
    export LLAMA_CPP_SRC=/work/llamacpp-src/llama_cpp_python-0.3.36/vendor/llama.cpp
    .venv/bin/python -m benchmarks.llama_cpp --model tiny        # about 2 min
    .venv/bin/python -m benchmarks.llama_cpp --model fullwidth   # GGUFs ~4 min once; the run 23 min here

(On the AVX2-only EPYC here most of the full-width run is recoverlib's engine: each repeat is a whole run,
about 260 s, and a one-token run for its prefill, about 200 s.)
Test (slow; skips without llama_cpp or LLAMA_CPP_SRC): ``pytest tests/benchmarks/test_llama_cpp.py -m slow``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

from benchmarks.ensemble_speed import Worker, recovery_prompts
from benchmarks.llama_cpp_batch import (
    BatchedLlama,
    Sampling,
    convert,
    default_src,
    quantize,
    require_llama_cpp,
)
from benchmarks.report import load_line, log_path, machine_info, machine_line, pyplot, write_table
from benchmarks.serving import fullwidth_model, tiny_model
from recoverlib.cache import cache_dir

RECOVERLIB = "recoverlib vLLM bf16"
WARMUP_ROWS = 2


def prompt_ids(tokenizer, rows: int, seed: int) -> tuple[list[str], list[list[int]]]:
    """A run's fresh prompts and their token ids (as recoverlib's engine tokenizes: the BOS is text)."""
    prompts = recovery_prompts(tokenizer, "kaggle", rows, seed)
    return prompts, tokenizer(prompts, add_special_tokens=False)["input_ids"]


def ggufs(model: Path, quants: list[str], src: Path | None, threads: int, log: Path) -> dict[str, Path]:
    """The checkpoint as GGUF files, bf16 and each of ``quants`` (made once, cached)."""
    folder = cache_dir("bench-llama-cpp") / model.parent.name
    bf16 = convert(model, folder / "bf16.gguf", src, log)
    return {"bf16": bf16, **{q: quantize(bf16, folder / f"{q}.gguf", q, threads) for q in quants}}


def time_llama(gguf: Path, args, tokenizer, repack: bool) -> list[dict]:
    """One GGUF's timed runs (fresh prompts each)."""
    engine = BatchedLlama(gguf, args.threads, repack)
    try:
        _, warm = prompt_ids(tokenizer, WARMUP_ROWS, 0)
        engine.generate(warm, args.samples, 2, Sampling(), 0)
        out = []
        for r in range(1, args.repeats + 1):
            _, ids = prompt_ids(tokenizer, args.rows, r)
            got = engine.generate(ids, args.samples, args.tokens, Sampling(), r)
            out.append({"prefill_s": got.prefill_s, "decode_s": got.decode_s, "generated": got.generated,
                        "prompt_tokens": sum(map(len, ids)), "sampler_s": got.sample_s})
            print(f"llama.cpp {gguf.stem:7s} run {r}: {got}", flush=True)
        return out
    finally:
        engine.close()


def time_recoverlib(model: Path, args, tokenizer, log: Path) -> list[dict]:
    """recoverlib's VLLMEngine (block 32, no adapters) in a warm worker: whole runs and prefill runs."""
    worker = Worker("b32", model, {}, log)
    try:
        def job(prompts, tokens, seed):
            return worker.run({"prompts": {"base": prompts}, "n": args.samples, "tokens": tokens,
                               "seed": seed})

        job(prompt_ids(tokenizer, WARMUP_ROWS, 0)[0], 2, 0)
        out = []
        for r in range(1, args.repeats + 1):
            prompts, ids = prompt_ids(tokenizer, args.rows, r)
            whole = job(prompts, args.tokens, r)
            prefill = job([f"~{p}" for p in prompts], 1, r)  # new texts for vLLM's prefix cache
            out.append({"prefill_s": prefill["seconds"], "decode_s": whole["seconds"] - prefill["seconds"],
                        "generated": whole["tokens"], "prompt_tokens": sum(map(len, ids))})
            print(f"{RECOVERLIB} run {r}: {out[-1]}", flush=True)
        return out
    finally:
        worker.close()


def summary(engine: str, runs: list[dict]) -> dict:
    """Medians over an engine's runs."""
    whole = [r["prefill_s"] + r["decode_s"] for r in runs]
    med = statistics.median(whole)
    return {"engine": engine, "prefill_s": statistics.median(r["prefill_s"] for r in runs),
            "decode_s": statistics.median(r["decode_s"] for r in runs), "whole_s": med,
            "tok_per_s": runs[0]["generated"] / med, "tok_per_s_min": runs[0]["generated"] / max(whole),
            "tok_per_s_max": runs[0]["generated"] / min(whole),
            "prompt_tokens": statistics.median(r["prompt_tokens"] for r in runs), "repeats": len(runs),
            "llama_sampler_s": statistics.median(r.get("sampler_s", float("nan")) for r in runs)}


def measure(args, folder: Path, log: Path) -> pd.DataFrame:
    from transformers import AutoTokenizer

    model = folder / "model"
    tokenizer = AutoTokenizer.from_pretrained(model)
    files = ggufs(model, args.quants, args.llama_cpp_src, args.threads, log)
    rows = [summary(f"llama.cpp {kind}", time_llama(path, args, tokenizer, args.repack))
            for kind, path in files.items()]
    if not args.skip_vllm:
        rows.append(summary(RECOVERLIB, time_recoverlib(model, args, tokenizer, log)))
    frame = pd.DataFrame(rows)
    ref = frame.loc[frame["engine"] == RECOVERLIB, "tok_per_s"]
    frame["x_recoverlib"] = frame["tok_per_s"] / ref.iloc[0] if len(ref) else float("nan")
    return frame


def plot(frame: pd.DataFrame, path: Path, title: str) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.barh(frame["engine"], frame["prefill_s"], label="prefill")
    left.barh(frame["engine"], frame["decode_s"], left=frame["prefill_s"], label="decode")
    left.set_xlabel("seconds per run (median)")
    left.invert_yaxis()
    left.legend()
    right.barh(frame["engine"], frame["tok_per_s"])
    right.set_xlabel("generated tokens / s")
    right.invert_yaxis()
    right.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("tiny", "fullwidth"), default="tiny")
    p.add_argument("--rows", type=int, default=None,
                   help="distinct prompts per run (default 8 tiny, 16 full)")
    p.add_argument("--samples", type=int, default=4, help="sequences per prompt (n), sharing its KV")
    p.add_argument("--tokens", type=int, default=16, help="new tokens per sequence (eos ignored)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quants", nargs="*", default=["q4_0", "q4_k_m"],
                   help="llama.cpp quantizations besides bf16")
    p.add_argument("--repack", choices=("auto", "on", "off"), default="auto",
                   help="llama.cpp weight repacking (auto: off on AMX CPUs, on elsewhere)")
    p.add_argument("--skip-vllm", action="store_true", help="llama.cpp rows only (a quick check)")
    p.add_argument("--llama-cpp-src", type=Path, default=default_src(),
                   help="llama.cpp source folder with convert_hf_to_gguf.py (default $LLAMA_CPP_SRC)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--name", default=None, help="results file stem (default llama_cpp_MODEL)")
    args = p.parse_args(argv)
    args.rows = args.rows or (16 if args.model == "fullwidth" else 8)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    require_llama_cpp()
    info = machine_info()
    amx = "amx" in info["cpu features"]
    args.repack = {"on": True, "off": False}.get(args.repack, not amx)
    cache = cache_dir("bench-serving")
    folder = fullwidth_model(cache) if args.model == "fullwidth" else tiny_model(cache / "tiny4", adapters=4)
    load_before = os.getloadavg()
    start = time.perf_counter()
    frame = measure(args, folder, log_path(f"llama_cpp_{args.model}"))
    load_after = os.getloadavg()
    import llama_cpp

    label = "full-width Mixtral shapes, 1 layer, random bf16 weights" if args.model == "fullwidth" \
        else "tiny Mixtral"
    name = args.name or f"llama_cpp_{args.model}"
    out = args.out or Path(__file__).resolve().parent / "results"
    notes = [
        f"Machine: {machine_line(info)}, llama-cpp-python {llama_cpp.__version__}",
        f"{load_line(load_before, load_after)}; {time.perf_counter() - start:.0f} s in all",
        f"Model: {label}, base (no adapters); {args.rows} prompts of 100-600 tokens x {args.samples}"
        f" sequences sharing each prompt's KV x {args.tokens} new tokens (eos ignored), temperature 0.7,"
        f" top-p 0.95, {args.threads} threads; fresh texts every run, the same for every engine; median of"
        f" {args.repeats} runs",
        f"llama.cpp weight repacking {'on' if args.repack else 'off'}; llama.cpp's prefill and decode timed"
        " directly (llama_sampler_s: the part of both in llama.cpp's sampler, called from Python per"
        " sequence); recoverlib's prefill is a one-token run of the same prompts, its decode the rest",
        "LoRA ensemble on llama.cpp: not measured (llama_set_adapters_lora sets adapters on a whole context,"
        " not per sequence; llama-server batches only slots with equal adapters: one pass per adapter)",
        "Command: python -m benchmarks.llama_cpp " + " ".join(argv if argv is not None else sys.argv[1:]),
    ]
    write_table(frame, out, name, f"llama.cpp beside recoverlib's vLLM engine ({info['cpu']})", notes)
    plot(frame, out / f"{name}.png", f"{args.model}: {args.rows} prompts x {args.samples} x {args.tokens}"
         f" tokens, {args.threads} threads; {info['cpu']}")
    print((out / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
