"""Question: what does serving through vLLM's OpenAI-compatible server cost against vLLM in the same process,
for the same ensemble job, and how much CPU does the client spend per row?

Both engines are warm and alive for the whole run, and timed in turn (in-process, server, in-process, ...):
the in-process ``VLLMEngine`` and ``recoverlib serve`` (vLLM's own server, started by this script on 127.0.0.1
with the same engine settings) driven by ``--engine openai`` (``OpenAIEngine``, one request per adapter with
the rows as a list, concurrency 1). The job: R rows x 4 rank-16 adapters x 4 samples x 16 tokens, eos ignored,
fresh texts for every timed run (the same texts for both engines of a run). Reported: generated tokens/s of
each (median, min, max), the ratio server / in-process (goal: >= 0.9 at full width), and the client's CPU
seconds per row (this process's user + system CPU while the server path ran: prompt rendering, tokenizing,
HTTP, JSON).

Reproduce (tiny ~3 min, full width ~20 min on 2 quiet cores):
    python -m benchmarks.serving_server --model tiny
    python -m benchmarks.serving_server --model fullwidth
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

from benchmarks.ensemble_speed import recovery_prompts
from benchmarks.report import load_line, log_path, machine_info, machine_line, pyplot, write_table
from benchmarks.serving import fullwidth_model, tiny_model
from recoverlib.cache import cache_dir
from recoverlib.engines import EngineConfig, SamplingConfig
from recoverlib.engines.openai import OpenAIConfig, OpenAIEngine
from recoverlib.engines.vllm import VLLMEngine
from recoverlib.engines.vllm_support import cpu_identity
from recoverlib.prompt import RecoveryTemplate
from recoverlib.runtime import relaunch_with_allocator
from recoverlib.serve import ServeConfig, VllmServer
from recoverlib.tiny import adapter_paths


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(
    engine, prompts: list[str], adapters: list[str], sampling: SamplingConfig
) -> tuple[float, float, int]:
    """(wall seconds, this process's CPU seconds, generated tokens) of one ensemble job."""
    cpu, start = cpu_seconds(), time.perf_counter()
    got = engine.generate(dict.fromkeys(adapters, prompts), sampling, adapters)
    wall, used = time.perf_counter() - start, cpu_seconds() - cpu
    return wall, used, sum(len(s) for per in got.values() for s in per) * sampling.max_new_tokens


def measure(args, model: Path, adapters: dict[str, Path], log: Path) -> list[dict]:
    sampling = SamplingConfig(samples=4, temperature=0.7, max_new_tokens=args.tokens, ignore_eos=True, seed=1)
    names = sorted(adapters)
    config = EngineConfig(lora_mode="dynamic", kv_cache_gib=2)
    local = VLLMEngine(model, adapters, config)
    server = VllmServer(model, adapters, config, ServeConfig(port=args.port), log).start()
    remote = OpenAIEngine(model, adapters, OpenAIConfig(server_url=server.url))
    tpl = RecoveryTemplate().for_tokenizer(local.tokenizer)
    results: dict[str, list] = {"in-process": [], "server": []}
    try:
        for engine in (local, remote):  # warm-up (not timed)
            timed(engine, [tpl.render(local.tokenizer, "a b c", "A B C")], names[:1],
                  SamplingConfig(max_new_tokens=2, temperature=0))
        for repeat in range(args.repeats):
            prompts = recovery_prompts(local.tokenizer, args.prompts, args.rows, 500 + repeat)
            order = [("in-process", local), ("server", remote)]
            for label, engine in order if repeat % 2 == 0 else order[::-1]:
                wall, cpu, tokens = timed(engine, prompts, names, sampling)
                results[label].append((tokens / wall, cpu / args.rows))
                print(
                    f"{label:10s} {tokens / wall:9.1f} tok/s, client CPU {cpu / args.rows * 1000:.1f} ms/row",
                    flush=True,
                )
    finally:
        remote.close()
        server.stop()
        local.close()
    rows = []
    med = {k: statistics.median(t for t, _ in v) for k, v in results.items()}
    for label, got in results.items():
        tps = [t for t, _ in got]
        rows.append(
            {
                "path": label,
                "tok_per_s": med[label],
                "min": min(tps),
                "max": max(tps),
                "x_in_process": med[label] / med["in-process"],
                "client_cpu_ms_per_row": statistics.median(c for _, c in got) * 1000
                if label == "server"
                else float("nan"),
                "repeats": len(got),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("tiny", "fullwidth"), default="tiny")
    p.add_argument("--prompts", choices=("synthetic", "kaggle"), default="kaggle")
    p.add_argument("--rows", type=int, default=None, help="rows per run (default: 64 tiny, 8 full width)")
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--port", type=int, default=8391)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if argv is None:  # the in-process engine runs as the server does: tcmalloc and libiomp5 preloaded
        relaunch_with_allocator([sys.executable, "-m", "benchmarks.serving_server", *sys.argv[1:]])
    full = args.model == "fullwidth"
    args.rows = args.rows or (8 if full else 64)
    cache = cache_dir("bench-serving")
    folder = fullwidth_model(cache) if full else tiny_model(cache / "tiny4", adapters=4)
    adapters = dict(sorted(adapter_paths(folder).items())[:4])
    out_dir = args.out or Path(__file__).resolve().parent / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"serving_server_{args.model}"
    load_before, start = os.getloadavg(), time.perf_counter()
    frame = pd.DataFrame(measure(args, folder / "model", adapters, log_path(name)))
    load_after = os.getloadavg()
    cpu = cpu_identity()[0]
    notes = [
        f"Machine: {machine_line(machine_info())}",
        f"{load_line(load_before, load_after)}; {time.perf_counter() - start:.0f} s in all",
        f"Model: {'full-width Mixtral shapes, 1 layer, random bf16 weights' if full else 'tiny Mixtral'};"
        f" {args.rows} {args.prompts} rows x {len(adapters)} rank-16 adapters x 4 samples x {args.tokens} "
        "tokens"
        f" per run, fresh texts every run; {args.repeats} repeats, alternating order",
        "client_cpu_ms_per_row: this process's CPU while the server worked, per row; an upper bound (the"
        " process also holds the idle in-process engine, whose OpenMP threads may spin)",
        f"Command: python -m benchmarks.serving_server --model {args.model}",
    ]
    write_table(frame, out_dir, name, f"In-process vLLM vs vLLM's server ({cpu})", notes)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(
        frame["path"],
        frame["tok_per_s"],
        yerr=[frame["tok_per_s"] - frame["min"], frame["max"] - frame["tok_per_s"]],
    )
    ax.set_ylabel("generated tokens / s")
    ax.set_title(f"Same ensemble job, {args.model}")
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}.png", dpi=120)
    print((out_dir / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
