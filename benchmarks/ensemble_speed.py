"""Question: how fast does recoverlib's vLLM engine serve an ensemble on a CPU, against vLLM as users start
it; which KV block size serves it fastest; and what do the adapters cost against the base model on equal
prompts?

The job is an ensemble: R rows x 4 rank-16 adapters x n samples x T new tokens (eos ignored), every row's
recovery prompt to every adapter, with fresh texts for every timed run (vLLM's prefix cache would otherwise
reuse an earlier run's prompts) and the same texts for every variant of a run. Variants, each a warm engine
in a process of its own, timed in turn (A B C ... A B C ..., the order rotated each repeat):

- ``vllm-defaults``: ``vllm.LLM`` as a user starts it for LoRA on a Mixtral on a CPU: only what that needs
  (``enable_lora``, its rank and target modules, the one plugin cure without which LoRA on a MoE cannot run,
  and ``enable_chunked_prefill=False`` for seeded sampling); vLLM's own defaults otherwise (128-token KV
  blocks on a CPU), no preloaded allocator;
- ``recoverlib bN``: recoverlib's ``VLLMEngine`` (all plugin cures, tcmalloc and libiomp5 preloaded as its
  commands run it) with N-token KV blocks;
- ``recoverlib base``: the same number of requests on the base model, through the ``--base-block`` engine (its
  adapters idle; each adapter's copy of a prompt gets a distinct leading number, so the base run cannot share
  prefills the adapters' runs cannot).

Prompts: ``synthetic`` (the synthetic task's rows, ~100 tokens) and ``kaggle`` (originals of 60-450 words, the
competition's range, each prompt fitted to 100-600 tokens). Reported: tokens/s median (min, max) over the
repeats, and each against ``vllm-defaults`` of the same prompts and n. The machine's CPU, its features and the
load average before and after are in the report.

Reproduce (~8 min tiny, ~12 min each full width on 2 quiet cores; results in benchmarks/results):
    python -m benchmarks.ensemble_speed --model tiny
    python -m benchmarks.ensemble_speed --model fullwidth
    python -m benchmarks.ensemble_speed --model fullwidth --blocks 128 --base-block 128 \
        --name ensemble_speed_fullwidth_b128
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from benchmarks.report import load_line, log_path, machine_info, machine_line, pyplot, write_table
from benchmarks.serving import fullwidth_model, tiny_model
from recoverlib.cache import cache_dir
from recoverlib.engines.vllm_support import cpu_identity
from recoverlib.runtime import PRELOAD_ENV, allocator_env
from recoverlib.synthetic.texts import original_text
from recoverlib.tiny import adapter_paths

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
DEFAULTS = "vllm-defaults"


def variant_env(variant: str) -> dict:
    """The environment a variant's engine process starts with."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", PRELOAD_ENV)}
    env.update(VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
               VLLM_ENABLE_V1_MULTIPROCESSING="0", TOKENIZERS_PARALLELISM="false",
               VLLM_LOGGING_STREAM="ext://sys.stderr")  # stdout carries the answers
    if variant == DEFAULTS:
        return {**env, "RECOVERLIB_VLLM_PLUGIN": "vllm-cpu-moe-kernel"}
    return {**env, **allocator_env()}


def serve_jobs(variant: str, model: str, adapters: dict[str, str]) -> None:
    """Worker: one warm engine; a JSON job per stdin line -> a JSON timing per stdout line."""
    if variant == DEFAULTS:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        llm = LLM(
            model,
            enable_lora=True,
            max_loras=len(adapters),
            max_lora_rank=16,
            lora_target_modules=ATTENTION,
            enable_chunked_prefill=False,
            seed=0,
        )
        loras = {n: LoRARequest(n, i + 1, p) for i, (n, p) in enumerate(sorted(adapters.items()))}

        def run(job):
            reqs = [(p, a) for a, ps in job["prompts"].items() for p in ps]
            params = SamplingParams(n=job["n"], temperature=0.7, top_p=0.95, max_tokens=job["tokens"],
                                    ignore_eos=True, seed=job["seed"])
            outs = llm.generate([p for p, _ in reqs], params, lora_request=[loras.get(a) for _, a in reqs],
                                use_tqdm=False)
            return sum(len(c.token_ids) for o in outs for c in o.outputs)
    else:
        from recoverlib.engines import EngineConfig, SamplingConfig
        from recoverlib.engines.vllm import VLLMEngine

        engine = VLLMEngine(model, adapters, EngineConfig(block_size=int(variant.removeprefix("b")),
                                                          lora_mode="dynamic"))

        def run(job):
            names = [None if a == "base" else a for a in job["prompts"]]
            prompts = {None if a == "base" else a: p for a, p in job["prompts"].items()}
            got = engine.generate(prompts, SamplingConfig(samples=job["n"], temperature=0.7, top_p=0.95,
                                                          max_new_tokens=job["tokens"], ignore_eos=True,
                                                          seed=job["seed"]), names)
            return sum(len(samples) for per in got.values() for samples in per) * job["tokens"]
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        start = time.perf_counter()
        tokens = run(job)
        print(json.dumps({"seconds": time.perf_counter() - start, "tokens": tokens}), flush=True)


class Worker:
    """A variant's engine process (see :func:`serve_jobs`)."""

    def __init__(self, variant: str, model: Path, adapters: dict, log: Path, env: dict | None = None):
        self.variant = variant
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.ensemble_speed",
            "--worker",
            variant,
            "--worker-model",
            str(model),
            "--worker-adapters",
            json.dumps({k: str(v) for k, v in adapters.items()}),
        ]
        with open(log, "a") as err:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         text=True, env=env or variant_env(variant))
        assert json.loads(self._line()).get("ready"), f"{variant} did not start; see {log}"

    def _line(self) -> str:
        """The worker's next answer (a JSON object line; anything else a library printed is skipped)."""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.variant} died")
            if line.startswith("{"):
                return line

    def run(self, job: dict) -> dict:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._line())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(120)


def rows_of(kind: str, count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` fresh (original, rewritten) pairs: synthetic-task sized, or Kaggle's 60-450 words."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = rng.randint(15, 40) if kind == "synthetic" else rng.randint(60, 450)
        text: list[str] = []
        while len(text) < words:
            text += original_text(rng).split()
        original = " ".join(text[:words])
        out.append((f"[{seed}] {original}", original.upper()))
    return out


KAGGLE_TOKENS = (100, 600)  # recovery prompt lengths of the competition's rows, in tokens


def recovery_prompts(tokenizer, kind: str, count: int, seed: int) -> list[str]:
    """``count`` fresh recovery prompts: the synthetic task's size (~100 tokens), or ``kaggle``: each fitted
    to a length drawn from :data:`KAGGLE_TOKENS` (whatever the tokenizer, so the tiny model's fits its
    context)."""
    from recoverlib.prompt import RecoveryTemplate

    tpl = RecoveryTemplate().for_tokenizer(tokenizer)
    rng = random.Random(seed)
    pairs = rows_of(kind, count, seed)
    if kind == "synthetic":
        return [tpl.render(tokenizer, o, r) for o, r in pairs]
    return [tpl.render_fitted(tokenizer, o, r, rng.randint(*KAGGLE_TOKENS))[0] for o, r in pairs]


def jobs_for(tokenizer, kind: str, rows: int, adapters: list[str], n: int, tokens: int, repeat: int) -> dict:
    """A timed run's prompts for the adapters and for the base (distinct copies), fresh for ``repeat``."""
    prompts = recovery_prompts(tokenizer, kind, rows, 1000 * repeat + n)
    return {"lora": {"prompts": dict.fromkeys(adapters, prompts), "n": n, "tokens": tokens, "seed": repeat},
            "base": {"prompts": {"base": [f"{k} {p}" for k in range(len(adapters)) for p in prompts]}, "n": n,
                     "tokens": tokens, "seed": repeat}}


def measure(args, model: Path, adapters: dict, log: Path) -> list[dict]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    engines = [DEFAULTS, *(f"recoverlib b{b}" for b in args.blocks)]
    workers = {v: Worker(v.replace("recoverlib ", ""), model, adapters, log) for v in engines}
    workers["recoverlib base"] = workers[f"recoverlib b{args.base_block}"]
    variants = [*engines, "recoverlib base"]
    rows = []
    try:
        for kind in args.prompts:
            for n in args.samples:
                times: dict[str, list[float]] = {v: [] for v in variants}
                for repeat in range(args.repeats):
                    job = jobs_for(tokenizer, kind, args.rows, sorted(adapters), n, args.tokens, repeat + 1)
                    order = variants[repeat % len(variants):] + variants[: repeat % len(variants)]
                    for v in order:
                        got = workers[v].run(job["base" if v.endswith("base") else "lora"])
                        times[v].append(got["tokens"] / got["seconds"])
                        print(f"{kind:9s} n={n} {v:16s} {times[v][-1]:9.1f} tok/s", flush=True)
                ref = statistics.median(times[DEFAULTS])
                for v, tps in times.items():
                    med = statistics.median(tps)
                    rows.append({"prompts": kind, "n": n, "variant": v, "tok_per_s": med, "min": min(tps),
                                 "max": max(tps), "x_vllm_defaults": med / ref, "repeats": len(tps)})
    finally:
        for v in engines:
            workers[v].close()
    return rows


def plot(frame: pd.DataFrame, path: Path, title: str) -> None:
    plt = pyplot()
    groups = [(k, n) for k, n in frame[["prompts", "n"]].drop_duplicates().itertuples(index=False)]
    variants = list(dict.fromkeys(frame["variant"]))
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(groups)), 4.5))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        part = frame[frame["variant"] == v].set_index(["prompts", "n"])
        ax.bar(
            [g + i * width for g in range(len(groups))],
            [part.loc[k, "tok_per_s"] for k in groups],
            width,
            label=v,
        )
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], [f"{k}, n={n}" for k, n in groups])
    ax.set_ylabel("generated tokens / s (median)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("tiny", "fullwidth"), default="tiny")
    p.add_argument("--prompts", nargs="+", default=["synthetic", "kaggle"])
    p.add_argument(
        "--samples", type=int, nargs="+", default=None, help="n (default: 1 4 8 tiny, 4 full width)"
    )
    p.add_argument("--blocks", type=int, nargs="+", default=None,
                   help="recoverlib's KV block sizes (default: 32 64 128 tiny; 32 full width, where each warm"
                   " engine holds about 8 GB and two fit a 24 GB machine)")
    p.add_argument("--base-block", type=int, default=32, help="the engine whose base-model speed is measured")
    p.add_argument("--rows", type=int, default=None, help="rows per run (default: 64 tiny, 8 full width)")
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--name", default=None, help="results file stem (default ensemble_speed_MODEL)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-model", help=argparse.SUPPRESS)
    p.add_argument("--worker-adapters", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return serve_jobs(args.worker, args.worker_model, json.loads(args.worker_adapters))
    full = args.model == "fullwidth"
    args.samples = args.samples or ([4] if full else [1, 4, 8])
    args.blocks = args.blocks or ([32] if full else [32, 64, 128])
    args.rows = args.rows or (8 if full else 64)
    cache = cache_dir("bench-serving")
    folder = fullwidth_model(cache) if full else tiny_model(cache / "tiny4", adapters=4)
    adapters = dict(sorted(adapter_paths(folder).items())[:4])
    load_before = os.getloadavg()
    start = time.perf_counter()
    out_dir = args.out or Path(__file__).resolve().parent / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = measure(args, folder / "model", adapters, log_path(f"ensemble_speed_{args.model}"))
    load_after = os.getloadavg()
    cpu = cpu_identity()[0]
    frame = pd.DataFrame(rows)
    name = args.name or f"ensemble_speed_{args.model}"
    notes = [
        f"Machine: {machine_line(machine_info())}",
        f"{load_line(load_before, load_after)}; {time.perf_counter() - start:.0f} s in all",
        f"Model: {'full-width Mixtral shapes, 1 layer, random bf16 weights' if full else 'tiny Mixtral'};"
        f" {args.rows} rows x {len(adapters)} rank-16 adapters x n samples x {args.tokens} tokens per run,"
        f" fresh texts every run; {args.repeats} repeats, variants in rotating order",
        "Command: python -m benchmarks.ensemble_speed "
        + " ".join(argv if argv is not None else sys.argv[1:]),
    ]
    write_table(frame, out_dir, name, f"Ensemble speed on a CPU ({cpu})", notes)
    plot(frame, out_dir / f"{name}.png", f"Ensemble tokens/s, {args.model} ({cpu})")
    print((out_dir / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
