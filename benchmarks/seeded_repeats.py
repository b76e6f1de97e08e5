"""Question: on a busy machine, does seeded sampling through vLLM's server repeat from run to run, with
recoverlib's whole-requests cure (the plugin's ``vllm-whole-requests``) and without it?

The same job runs again and again against one warm server (``recoverlib serve``, tiny Mixtral, two adapters
and the base): ``recoverlib predict --engine openai`` over the project's sample rows, the base and both
adapters, 3 samples of 10 tokens, seed 7, while two busy-loop processes keep both cores loaded (a CI machine
running other tests is the case this answers; load makes the server's API process slow to hand a request's
prompts to the engine). Then the same against a server whose plugin has every cure but that one. Reported per
server: runs whose samples equal the first run's byte for byte, distinct outputs among the runs, and samples
that differ from the first run's. Not a timing benchmark (the machine is loaded on purpose); the seconds per
run are only there to show the cure costs nothing visible.

Reproduce (~5 min on 2 cores):
    python -m benchmarks.seeded_repeats
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from benchmarks.report import load_line, log_path, machine_info, machine_line, pyplot, write_table
from benchmarks.serving import tiny_model
from recoverlib.cache import cache_dir
from recoverlib.cli import main as cli_main
from recoverlib.engines import EngineConfig
from recoverlib.engines.vllm_support import cpu_identity
from recoverlib.io import read_sample_lines
from recoverlib.runtime import kept_environ
from recoverlib.serve import ServeConfig, VllmServer
from recoverlib.tiny import adapter_paths
from recoverlib.vllm_plugin import CURES, DISABLE_ENV

CURE = "vllm-whole-requests"


@contextmanager
def busy_cores(count: int):
    """``count`` processes spinning on a core each, for as long as the block runs."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


@contextmanager
def plugin_cures(names: list[str]):
    """The vLLM plugin limited to ``names`` in processes started inside the block (over any caller value)."""
    with kept_environ(DISABLE_ENV):
        os.environ[DISABLE_ENV] = ",".join(names)
        yield


def predict_once(model: Path, adapters: dict[str, Path], url: str, rows: Path, out: Path) -> list[str]:
    """One ``recoverlib predict --engine openai`` run, as a user types it; its samples, in file order."""
    named = [x for n, a in adapters.items() for x in ("--adapter", f"{n}={a}")]
    argv = ["predict", "--model", str(model), *named,
            "--include-base", "--engine", "openai", "--server-url", url, "--samples", "3", "--seed", "7",
            "--max-new-tokens", "10", "--input", str(rows), "--out", str(out),
            "--samples-file", str(out.with_suffix(".jsonl"))]
    with contextlib.redirect_stderr(io.StringIO()) as err:
        code = cli_main(argv)
    if code != 0:
        raise SystemExit(f"predict failed: {err.getvalue()[-2000:]}")
    return [s.text for _, _, samples in read_sample_lines(out.with_suffix(".jsonl")) for s in samples]


def runs_against(model: Path, adapters: dict[str, Path], args, cures: list[str], label: str) -> dict:
    """Start a server with ``cures``, run the same seeded predict ``args.runs`` times under load; the
    counts."""
    config = EngineConfig()
    with plugin_cures(cures):
        server = VllmServer(model, adapters, config, ServeConfig(port=args.port), log_path(f"seeded_{label}"))
        server.start()
    outputs, seconds = [], []
    try:
        with tempfile.TemporaryDirectory() as tmp, busy_cores(args.busy):
            for i in tqdm(range(args.runs), desc=label):
                start = time.perf_counter()
                outputs.append(predict_once(model, adapters, server.url, args.input, Path(tmp) / f"{i}.csv"))
                seconds.append(time.perf_counter() - start)
    finally:
        server.stop()
    first = outputs[0]
    return {
        "server": label,
        "runs": len(outputs),
        "runs_equal_to_first": sum(out == first for out in outputs),
        "distinct_outputs": len({tuple(out) for out in outputs}),
        "samples_differing_from_first": sum(
            a != b for out in outputs[1:] for a, b in zip(first, out, strict=True)
        ),
        "samples_per_run": len(first),
        "median_s_per_run": statistics.median(seconds),
    }


def plot(frame: pd.DataFrame, path: Path) -> None:
    """Bars: the share of each server's runs that equal its first run byte for byte."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(frame["server"], frame["runs_equal_to_first"] / frame["runs"])
    ax.set_ylabel("share of runs equal to the first")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{frame['runs'].iloc[0]} seeded runs on a loaded machine")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", type=Path, default=Path(__file__).resolve().parent.parent / "examples" / "data"
                   / "sample.csv", help="rows to predict (default: the project's sample rows)")
    p.add_argument("--runs", type=int, default=30, help="runs per server")
    p.add_argument("--busy", type=int, default=2, help="busy-loop processes while the runs go")
    p.add_argument("--port", type=int, default=8393)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    folder = tiny_model(cache_dir("bench-serving") / "tiny3", adapters=3)  # the tests' tiny model
    adapters = dict(sorted(adapter_paths(folder).items())[:2])
    out_dir = args.out or Path(__file__).resolve().parent / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    load_before, start = os.getloadavg(), time.perf_counter()
    without = [name for name in CURES if name != CURE]
    rows = [runs_against(folder / "model", adapters, args, list(CURES), "with the cure"),
            runs_against(folder / "model", adapters, args, without, "without it")]
    frame = pd.DataFrame(rows)
    load_after = os.getloadavg()
    notes = [
        f"Machine: {machine_line(machine_info())}",
        f"{load_line(load_before, load_after)} (the load is made: {args.busy} busy-loop processes during the"
        f" runs); {time.perf_counter() - start:.0f} s in all",
        f"Job: recoverlib predict --engine openai over {args.input.name}:"
        f" {rows[0]['samples_per_run']} samples (rows x (2 adapters + base) x 3) of 10 tokens, seed 7, one"
        " request per adapter (concurrency 1)",
        f"Without it: RECOVERLIB_VLLM_PLUGIN={','.join(without)}",
        "Command: python -m benchmarks.seeded_repeats",
    ]
    name = "seeded_repeats"
    title = f"Seeded samples through vLLM's server, run to run ({cpu_identity()[0]})"
    write_table(frame, out_dir, name, title, notes)
    plot(frame, out_dir / f"{name}.png")
    print((out_dir / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
