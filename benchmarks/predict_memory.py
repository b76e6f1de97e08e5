"""Question: does ``recoverlib predict`` run in bounded memory as rows grow, and what does a row cost in RSS?

Ways of doing the same work in one run: the same predict (tiny Mixtral, 1 greedy sample of 2 new tokens, no
adapters) by engine, compute dtype and rows: by default the HF engine in bf16 (the checkpoint's dtype) and in
``auto`` (float32 on CPU) over 2,000 rows, ``auto`` over 20,000, and vLLM over 2,000 and 20,000 (one row in
500 has an empty text, which must cost that row only: it gets the fallback prompt). Each predict runs as its
own process; its RSS is read from /proc every 0.2 s, next to how many rows its samples file holds. Reported:
peak RSS of each run, the ratio of peaks between row counts, and the RSS growth per row (a least-squares
slope of RSS against rows done over the second half of the run, after warm-up), next to the samples file's
bytes per row (what predict keeps per row by design: the samples, for combining at the end).

Reproduce: ``python -m benchmarks.predict_memory`` (about 8 minutes on the 2-core CPU); ``--runs
hf:auto:2000`` picks runs; ``--quick`` uses 200 and 2,000 rows, HF only, and writes to a scratch folder.
Findings (Dec 2026, 2-core AMD EPYC): in bf16 the HF engine grew about 0.5 MB per row inside generate with
changing prompt shapes (oneDNN's 16-bit matmuls; Python-level allocations stayed flat under tracemalloc), so
``auto`` on CPU now computes in float32: 1.06x the peak RSS for 10x the rows. vLLM on CPU grew 24-52 KB per
row in native memory without tcmalloc; with tcmalloc and libiomp5 preloaded (as recoverlib's commands run it)
200,000 rows peaked at 3.09 GB, 1.3 KB per row over the second half, in steps (allocator high-water marks;
building the engine again every 50,000 rows released nothing): ``--runs vllm:auto:200000 --name
predict_memory_vllm_200k``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.report import load_line, machine_info, machine_line, pyplot, results_dir, write_table

EMPTY_EVERY = 500  # one row in this many has an empty rewritten_text


def make_input(rows: int, path: Path, seed: int = 0) -> Path:
    """``rows`` synthetic Kaggle rows (short texts from the synthetic task), some with an empty text."""
    from recoverlib.synthetic import TaskConfig, generate

    task = generate(TaskConfig(rows=rows, eval_rows=1, seed=seed))["train"]
    frame = pd.DataFrame({"id": [f"r{i:06d}" for i in range(rows)],
                          "original_text": [r.original_text for r in task],
                          "rewritten_text": [r.rewritten_text for r in task]})
    frame.loc[frame.index % EMPTY_EVERY == EMPTY_EVERY - 1, "rewritten_text"] = ""
    frame.to_csv(path, index=False)
    return path


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_predict(model: Path, engine: str, dtype: str, rows: int, work: Path) -> dict:
    """One predict process over ``rows`` rows; its RSS trace against rows done, and what it wrote."""
    inp = work / f"in_{rows}.csv"
    if not inp.is_file():
        make_input(rows, inp)
    samples, out = work / f"samples_{engine}_{dtype}_{rows}.jsonl", work / f"sub_{engine}_{dtype}_{rows}.csv"
    samples.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "recoverlib.cli",
        "predict",
        "--engine",
        engine,
        "--model",
        str(model),
        "--input",
        str(inp),
        "--out",
        str(out),
        "--samples-file",
        str(samples),
        "--samples",
        "1",
        "--max-new-tokens",
        "2",
        "--temperature",
        "0",
        "--batch-size",
        "64",
        "--chunk-rows",
        "256",
        "--dtype",
        dtype,
    ]
    start = time.perf_counter()
    # a file, not a pipe: thousands of warnings would fill a pipe
    log = work / f"log_{engine}_{dtype}_{rows}.txt"
    with open(log, "w") as err:                         # nobody reads until the end, and block the run
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    trace = []  # (seconds, rows done, rss bytes)
    while proc.poll() is None:
        rss = rss_bytes(proc.pid)
        done = samples.read_bytes().count(b"\n") if samples.is_file() else 0
        if rss:
            trace.append((time.perf_counter() - start, done, rss))
        time.sleep(0.2)
    proc.wait()
    stderr = log.read_text(errors="replace")
    if proc.returncode:  # recorded, and the other runs go on
        last = (stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"{engine} {dtype} over {rows} rows failed:\n{stderr[-3000:]}", file=sys.stderr)
        return {"engine": engine, "dtype": dtype, "rows": rows, "seconds": time.perf_counter() - start,
                "trace": np.array(trace or [(0, 0, 0)], dtype=float), "fallbacks": 0, "written": 0,
                "samples_bytes": 0, "progress_bar": "rows:" in stderr, "failed": last[:200]}
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    return {
        "engine": engine,
        "dtype": dtype,
        "rows": rows,
        "seconds": time.perf_counter() - start,
        "trace": np.array(trace, dtype=float),
        "fallbacks": stderr.count("it gets the fallback prompt"),
        "written": len(sub),
        "samples_bytes": samples.stat().st_size,
        "progress_bar": "rows:" in stderr,
    }


def per_row_slope(trace: np.ndarray, rows: int) -> float:
    """Bytes of RSS per row done: least squares over the second half of the rows (after warm-up)."""
    late = trace[trace[:, 1] >= rows / 2]
    if len(np.unique(late[:, 1])) < 2:
        return float("nan")
    return float(np.polyfit(late[:, 1], late[:, 2], 1)[0])


FULL = ("hf:bfloat16:2000", "hf:auto:2000", "hf:auto:20000", "vllm:auto:2000", "vllm:auto:20000")
QUICK = ("hf:bfloat16:200", "hf:auto:200", "hf:auto:2000")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="200 and 2,000 rows, HF only; results to a scratch folder"
    )
    parser.add_argument("--runs", nargs="+", metavar="ENGINE:DTYPE:ROWS", help=f"default: {' '.join(FULL)}")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--name", default="predict_memory", help="results file stem")
    args = parser.parse_args()
    specs = [
        (e, d, int(n)) for e, d, n in (r.split(":") for r in args.runs or (QUICK if args.quick else FULL))
    ]
    out_dir = results_dir(args.out, args.quick)
    from recoverlib.cache import cache_dir

    work = cache_dir("bench-predict-memory")  # inputs, samples and submissions: scratch, never results
    work.mkdir(parents=True, exist_ok=True)
    from recoverlib.tiny import make_tiny

    model = make_tiny(work / "tiny", adapters=0, seed=0) / "model"
    runs, load_before = [], os.getloadavg()
    # the table is rewritten after every run: a run stopped part-way keeps the finished ones
    for e, d, n in specs:
        runs.append(run_predict(model, e, d, n, work))
        path = report(runs, out_dir, args.name, load_line(load_before, os.getloadavg()))
    print(path.read_text())


def report(runs: list[dict], out_dir: Path, name: str, load: str) -> Path:
    table = pd.DataFrame(
        [
            {
                "engine": r["engine"],
                "dtype": r["dtype"],
                "rows": r["rows"],
                "seconds": r["seconds"],
                "ms per row": 1000 * r["seconds"] / r["rows"],
                "peak RSS MiB": r["trace"][:, 2].max() / 2**20,
                "RSS growth per row (bytes)": per_row_slope(r["trace"], r["rows"]),
                "samples file bytes per row": r["samples_bytes"] / r["rows"],
                "rows given the fallback": r["fallbacks"],
                "rows written": r["written"],
                "progress bar": r["progress_bar"],
                "failed": r.get("failed", ""),
            }
            for r in runs
        ]
    )
    notes = [
        f"Machine: {machine_line(machine_info())}",
        load,
        *ratios(table),
        f"Rows with an empty text (one in {EMPTY_EVERY}), or whose 2 greedy tokens cleaned to nothing, get "
        "the"
        " fallback; *rows written*: the submission's rows.",
        "Command: python -m benchmarks.predict_memory " + " ".join(sys.argv[1:]),
    ]
    path = write_table(table, out_dir, name, "predict: memory against rows (tiny model)", notes)
    _plot(runs, out_dir / f"{name}.png")
    return path


def ratios(table: pd.DataFrame) -> list[str]:
    """Per engine and dtype with two row counts: the peak RSS ratio of the largest run to the smallest."""
    out = []
    for (engine, dtype), part in table.groupby(["engine", "dtype"], sort=False):
        if len(part) > 1:
            lo, hi = part.loc[part.rows.idxmin()], part.loc[part.rows.idxmax()]
            out.append(f"{engine} {dtype}: peak RSS ratio {hi.rows:,} rows / {lo.rows:,} rows = "
                       f"{hi['peak RSS MiB'] / lo['peak RSS MiB']:.3f} (rows x{hi.rows // lo.rows}).")
    return out


def _plot(runs: list[dict], path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        ax.plot(
            r["trace"][:, 1],
            r["trace"][:, 2] / 2**20,
            label=f"{r['engine']} {r['dtype']}, {r['rows']:,} rows",
        )
    if len({r["rows"] for r in runs}) > 1:  # row counts 10x apart: each run's growth visible
        ax.set_xscale("symlog", linthresh=1000)
    ax.set_xlabel("rows done (samples file lines)")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title("recoverlib predict: RSS against rows done")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
