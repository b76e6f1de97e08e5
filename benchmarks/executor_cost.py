"""Question: what does running predict on Ray cost per row against one process, and how far would it scale?

The same predict (tiny Mixtral, vLLM, 2 adapters x 2 samples x 8 new tokens, chunks of 128 rows, a samples
file) at equal cores: ``--executor local`` (one engine on both cores), ``--executor ray`` with 1 worker of 2
CPUs, and with 2 workers of 1 CPU each (a local Ray started for the run). Each is run over R and 3R rows; the
per-row time is the slope between them, so engine starts and Ray's own start cancel out (an untimed local run
first pays this process's one-time imports, which a fresh Ray worker pays in every run). The executor's own
cost per row is Ray with 1 worker against local (goal: <= 5%); the driver's CPU per row is this process's CPU
slope under Ray (it renders nothing: it plans chunks, waits, and appends samples in order). From the measured
per-worker throughput and the driver's cost, the table extrapolates rows/s to N workers: ``min(N x per-worker
rows/s, 1 / driver CPU per row)``.

Reproduce (about 8 minutes on 2 quiet cores):
    python -m benchmarks.executor_cost
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import pandas as pd

from benchmarks.predict_memory import make_input
from benchmarks.report import load_line, machine_info, machine_line, markdown_table, pyplot, write_table
from benchmarks.serving import tiny_model
from recoverlib.cache import cache_dir
from recoverlib.engines import SamplingConfig
from recoverlib.engines.vllm_support import cpu_identity
from recoverlib.executors.ray import RayConfig, RayExecutor
from recoverlib.pipeline import PredictConfig, predict
from recoverlib.tiny import adapter_paths

CONFIG = PredictConfig(SamplingConfig(samples=2, max_new_tokens=8, seed=3), chunk_rows=128)
SETUPS = {"local": None, "ray 1x2 CPU": RayConfig(workers=1, cpus_per_worker=2),
          "ray 2x1 CPU": RayConfig(workers=2, cpus_per_worker=1)}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_run(label: str, model: Path, adapters: dict, inp: Path, work: Path) -> tuple[float, float]:
    """(wall seconds, driver CPU seconds) of one predict over ``inp``."""
    samples = work / f"{label.replace(' ', '_')}_{inp.stem}.jsonl"
    samples.unlink(missing_ok=True)
    executor = "local" if SETUPS[label] is None else RayExecutor(SETUPS[label])
    cpu, start = cpu_seconds(), time.perf_counter()
    predict(
        model,
        inp,
        work / "sub.csv",
        adapters=adapters,
        engine="vllm",
        config=CONFIG,
        samples_file=samples,
        executor=executor,
    )
    return time.perf_counter() - start, cpu_seconds() - cpu


def measure(rows: int, model: Path, adapters: dict, work: Path) -> list[dict]:
    small, large = (
        make_input(rows, work / f"in_{rows}.csv", seed=1),
        make_input(3 * rows, work / f"in_{3 * rows}.csv", seed=2),
    )
    # This process pays vLLM's imports and one-time set-up in its first engine; a Ray worker pays them in
    # every run (a fresh process), where the slope cancels them. Untimed, so both local runs start warm.
    one_run("local", model, adapters, make_input(128, work / "in_warmup.csv", seed=3), work)
    out = []
    for label in SETUPS:
        (t1, c1), (t3, c3) = (
            one_run(label, model, adapters, small, work),
            one_run(label, model, adapters, large, work),
        )
        per_row, cpu_per_row = (t3 - t1) / (2 * rows), (c3 - c1) / (2 * rows)
        out.append({"executor": label, "rows_per_s": 1 / per_row, "ms_per_row": per_row * 1000,
                    "driver_cpu_ms_per_row": cpu_per_row * 1000 if label != "local" else float("nan"),
                    f"wall_s_{rows}": t1, f"wall_s_{3 * rows}": t3})
        print(out[-1], flush=True)
    local = out[0]["ms_per_row"]
    for row in out:
        row["x_local_time_per_row"] = row["ms_per_row"] / local
    return out


def extrapolate(rows: list[dict]) -> pd.DataFrame:
    """Rows/s for N workers from the 2-worker run's per-worker throughput and the driver's CPU per row."""
    two = next(r for r in rows if r["executor"] == "ray 2x1 CPU")
    per_worker = two["rows_per_s"] / 2
    driver_cap = 1000 / max(max(r["driver_cpu_ms_per_row"] for r in rows[1:]), 1e-6)
    return pd.DataFrame([{"workers": n, "rows_per_s": min(n * per_worker, driver_cap),
                          "limited_by": "driver" if n * per_worker > driver_cap else "workers"}
                         for n in (1, 2, 4, 8, 16, 32, 64, 128, 256)])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1024, help="R: runs over R and 3R rows")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local Ray for this run only
    folder = tiny_model(cache_dir("bench-serving") / "tiny4", adapters=4)
    adapters = dict(sorted(adapter_paths(folder).items())[:2])
    work = cache_dir("bench-executor")
    work.mkdir(parents=True, exist_ok=True)
    out_dir = args.out or Path(__file__).resolve().parent / "results"
    load_before, start = os.getloadavg(), time.perf_counter()
    rows = measure(args.rows, folder / "model", adapters, work)
    load_after = os.getloadavg()
    cpu = cpu_identity()[0]
    frame, scale = pd.DataFrame(rows), extrapolate(rows)
    notes = [
        f"Machine: {machine_line(machine_info())}",
        f"{load_line(load_before, load_after)}; {time.perf_counter() - start:.0f} s in all",
        f"Job: tiny Mixtral through vLLM, {len(adapters)} adapters x 2 samples x 8 tokens, chunks of 128 "
        "rows;"
        f" per-row figures are slopes between {args.rows:,} and {3 * args.rows:,} rows",
        "Command: python -m benchmarks.executor_cost",
        "",
        "Extrapolated to N workers (each as measured with 2 workers; the driver's CPU per row caps it):",
        "",
        markdown_table(scale),
    ]
    write_table(frame, out_dir, "executor_cost", f"predict on Ray vs one process ({cpu})", notes)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(scale["workers"], scale["rows_per_s"], "o-")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("workers")
    ax.set_ylabel("rows / s (extrapolated)")
    ax.set_title("predict on Ray: where the driver saturates")
    fig.tight_layout()
    fig.savefig(out_dir / "executor_cost.png", dpi=120)
    print((out_dir / "executor_cost.md").read_text())


if __name__ == "__main__":
    main()
