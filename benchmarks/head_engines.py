"""Question: does vLLM serve a learned head as the transformers + PEFT reference does, and how fast does each
head engine score a verifier's inputs (a row's pair followed by one candidate prompt)?

A verifier head (LoRA on attention, a linear head on the last token) is made on the base by PEFT itself with
seeded random LoRA weights (``init_lora_weights=False``: every factor non-zero, so a head engine that dropped
the LoRA would disagree) and saved as ``recoverlib train --head`` saves one; speed and agreement do not depend
on training. Each head engine (``recoverlib.heads.engines``: ``hf``, ``vllm``) loads it, scores a warm-up set,
then ``--repeats`` fresh sets of ``--rows`` synthetic pairs x ``--candidates`` candidates each (no set is seen
twice by an engine, so vLLM's prefix cache only shares what a row's candidates share in real use: its pair).
Each engine runs alone in a fresh process, one after the other. Reported per engine: start seconds (load +
first set), the resident memory loading the base and head added (the process's RSS after the first set less
before loading), median seconds per set, inputs/s, the ratio against ``hf``, and the largest difference of its
scores from ``hf``'s, with the scores' spread and the rank correlation.

Reproduce (2 quiet cores; ~1 min tiny, ~8 min full width)::

    python -m benchmarks.head_engines --model tiny
    python -m benchmarks.head_engines --model fullwidth --rows 4 --candidates 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from tqdm import tqdm

from benchmarks.report import Timing, load_line, machine_info, machine_line, pyplot, results_dir, write_table
from benchmarks.serving import fullwidth_model, tiny_model
from recoverlib.cache import cache_dir
from recoverlib.heads.engines import HEAD_ENGINES
from recoverlib.heads.model import HeadInfo, load_head, save_head
from recoverlib.synthetic import TaskConfig, generate
from recoverlib.training.lora import ATTENTION_MODULES

MAX_LENGTH = 320


def random_head(base: Path, out: Path, seed: int, rank: int = 8) -> Path:
    """A verifier head folder on ``base`` with seeded random LoRA and linear weights, written by PEFT."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if (out / "recoverlib_head.json").is_file():
        return out
    torch.manual_seed(seed)  # PEFT draws its initial factors from torch's global generator
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(ATTENTION_MODULES),
                      init_lora_weights=False)
    model = get_peft_model(model, lora)
    head = torch.nn.Linear(model.config.hidden_size, 1)
    info = HeadInfo(kind="verifier", dim=1, embedder="minilm", base=str(base), template="chat",
                    max_length=MAX_LENGTH)
    save_head(out, model, head, info)
    return out


def input_sets(sets: int, rows: int, candidates: int, seed: int) -> list[tuple[list, list]]:
    """``sets`` disjoint sets of (pairs, candidates): each of ``rows`` synthetic pairs with ``candidates``
    prompts of other rows."""
    task = generate(TaskConfig(rows=sets * rows + candidates, eval_rows=1, seed=seed))["train"]
    out = []
    for s in range(sets):
        part = task[s * rows : (s + 1) * rows]
        pairs = [(r.original_text, r.rewritten_text) for r in part for _ in range(candidates)]
        cands = [task[(s * rows + k + j + 1) % len(task)].rewrite_prompt for k in range(rows)
                 for j in range(candidates)]
        out.append((pairs, cands))
    return out


def run_engine(name: str, folder: Path, sets: list, progress: bool) -> dict:
    """Load the head on engine ``name``, score the warm-up set (start), then each timed set; the resident
    memory before loading and after the first set (this process's)."""
    import psutil

    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    start = time.perf_counter()
    head = load_head(folder, engine=name)
    first = head.predict(*sets[0])
    started = time.perf_counter() - start
    rss1 = proc.memory_info().rss
    seconds, scores = [], [first]
    for pairs, cands in tqdm(sets[1:], desc=name, unit="set", disable=not progress):
        t = time.perf_counter()
        scores.append(head.predict(pairs, cands))
        seconds.append(time.perf_counter() - t)
    return {"start_s": started, "seconds": seconds, "scores": np.concatenate(scores).tolist(),
            "rss_added_mb": (rss1 - rss0) / 2**20}


def in_child(name: str, folder: Path, args) -> dict:
    """:func:`run_engine` in a fresh process (each engine alone: its memory is its own, and vLLM's thread
    binding in one engine cannot slow the other)."""
    cmd = [sys.executable, "-m", "benchmarks.head_engines", "--worker", name, "--folder", str(folder),
           "--rows", str(args.rows), "--candidates", str(args.candidates), "--repeats", str(args.repeats),
           "--seed", str(args.seed)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "got.json"
        subprocess.run([*cmd, "--result", str(out)], check=True)
        got = json.loads(out.read_text())
    return {**got, "timing": Timing.of(got["seconds"]), "scores": np.asarray(got["scores"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("tiny", "fullwidth"), default="tiny")
    p.add_argument("--rows", type=int, default=16, help="pairs per set")
    p.add_argument("--candidates", type=int, default=8, help="candidates per pair")
    p.add_argument("--repeats", type=int, default=3, help="timed sets per engine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    p.add_argument("--worker", help=argparse.SUPPRESS)  # run one engine (in_child) and write --result
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        sets = input_sets(args.repeats + 1, args.rows, args.candidates, args.seed)
        args.result.write_text(json.dumps(run_engine(args.worker, args.folder, sets, progress=True)))
        return 0
    cache = cache_dir("bench-serving")
    base = fullwidth_model(cache) if args.model == "fullwidth" else tiny_model(cache / "tiny4", adapters=4)
    base = base / "model" if (base / "model" / "config.json").is_file() else base
    folder = random_head(base, cache_dir("bench-heads") / f"{args.model}-verifier-{args.seed}", args.seed)
    sets = input_sets(args.repeats + 1, args.rows, args.candidates, args.seed)
    before = os.getloadavg()
    got = {name: in_child(name, folder, args) for name in ("hf", "vllm")}
    after = os.getloadavg()
    ref = got["hf"]
    frame = pd.DataFrame([
        {"engine": name, "inputs per set": len(sets[0][0]), "start s": r["start_s"],
         "resident MB added": r["rss_added_mb"],
         "s per set (median)": r["timing"].median, "min": r["timing"].min, "max": r["timing"].max,
         "inputs/s": len(sets[0][0]) / r["timing"].median,
         "speed vs hf": ref["timing"].median / r["timing"].median,
         "max |score - hf|": f"{np.abs(r['scores'] - ref['scores']).max():.1e}",
         "score spread (std)": f"{r['scores'].std():.1e}",
         "rank correlation with hf": spearmanr(r["scores"], ref["scores"]).statistic}
        for name, r in got.items()
    ])
    name = f"head_engines_{args.model}"
    out = results_dir(args.out, quick=False)
    notes = [
        __doc__.split("\n\n")[0].replace("\n", " "),
        f"Machine: {machine_line(machine_info())}",
        f"Command: python -m benchmarks.head_engines {' '.join(argv or sys.argv[1:])}",
        f"{load_line(before, after)}.",
        f"Model: {args.model} ({base}); head engines: {', '.join(HEAD_ENGINES.names())}; "
        f"{args.repeats} timed sets of {args.rows} pairs x {args.candidates} candidates, inputs fitted to "
        f"{MAX_LENGTH} tokens.",
    ]
    path = write_table(frame, out, name, "Head engines: vLLM's pooling runner vs transformers + PEFT", notes)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(frame["engine"], frame["inputs/s"], color=["tab:gray", "tab:blue"])
    ax.set_ylabel("verifier inputs scored per second")
    ax.set_title(f"head engines, {args.model}")
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=120)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
