"""A real predict killed with SIGKILL part-way, then resumed: no row lost, none twice, the same bytes as a run
that never stopped (submission and samples file)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "recoverlib.cli", *map(str, args)]


def _rows_csv(sample_csv, path, copies: int = 2):
    frame = pd.read_csv(sample_csv, dtype=str)
    frame = pd.concat([frame.assign(id=frame["id"] + f"-{k}") for k in range(copies)], ignore_index=True)
    frame.to_csv(path, index=False)
    return len(frame)


def _wait_for_lines(path, n: int, proc, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.is_file() and path.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} lines (exit {proc.poll()})")


@pytest.mark.slow
def test_predict_killed_then_resumed_writes_the_same_bytes(tiny_model, tiny_adapters, sample_csv, tmp_path):
    rows = _rows_csv(sample_csv, tmp_path / "in.csv")
    common = [
        "predict",
        "--engine",
        "hf",
        "--model",
        tiny_model,
        "--adapter",
        f"a={tiny_adapters['tiny-a']}",
        "--input",
        tmp_path / "in.csv",
        "--samples",
        "2",
        "--max-new-tokens",
        "6",
        "--temperature",
        "1.0",
        "--seed",
        "5",
        "--chunk-rows",
        "3",
        "--batch-size",
        "2",
    ]
    whole = subprocess.run(
        _cli(*common, "--out", tmp_path / "whole.csv", "--samples-file", tmp_path / "whole.jsonl"),
        capture_output=True,
        text=True,
    )
    assert whole.returncode == 0, whole.stderr[-2000:]

    part = tmp_path / "part.jsonl"
    proc = subprocess.Popen(_cli(*common, "--out", tmp_path / "part.csv", "--samples-file", part),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_lines(part, 4, proc)  # inside the second chunk's write or after it: either way part-way
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "part.csv").exists()  # the submission is written whole at the end, or not at all
    done = part.read_bytes()
    assert 4 <= done.count(b"\n") < rows
    # Rows written before the kill are the uninterrupted run's; then tear the next line as a kill mid-write
    # would.
    whole_lines = (tmp_path / "whole.jsonl").read_bytes().splitlines(keepends=True)
    kept = done[: done.rfind(b"\n") + 1]
    k = kept.count(b"\n")
    assert kept == b"".join(whole_lines[:k])
    part.write_bytes(kept + whole_lines[k][: len(whole_lines[k]) // 2])
    resumed = subprocess.run(
        _cli(*common, "--out", tmp_path / "part.csv", "--samples-file", part, "--resume"),
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "cut short by a crash" in resumed.stderr
    assert part.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert (tmp_path / "part.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()


@pytest.mark.slow
def test_tune_killed_then_rerun_writes_the_same_bytes(tmp_path):
    from tests.combine.synth import make_split

    make_split(
        tmp_path / "val.jsonl",
        tmp_path / "val.csv",
        rows=200,
        per_adapter=4,
        adapters=("a", "b", "c"),
        agree=0.5,
        seed=1,
    )
    (tmp_path / "mean.txt").write_text("Rewrite the text in a different style.\n")
    common = ["tune", "--samples-file", tmp_path / "val.jsonl", "--truth", tmp_path / "val.csv", "--embedder",
              "minilm", "--mean-prompt", tmp_path / "mean.txt", "--bootstrap", "200", "--seed", "3"]
    whole = subprocess.run(_cli(*common, "--out", tmp_path / "whole.json"), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-2000:]

    out, partial = tmp_path / "out.json", tmp_path / "out.json.partial.jsonl"
    proc = subprocess.Popen(_cli(*common, "--out", out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_lines(partial, 3, proc)  # the digest and two candidates saved: part-way through the grid
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    saved = partial.read_bytes().count(b"\n") - 1
    assert 2 <= saved < 10  # the grid has 10 candidates with a mean prompt
    again = subprocess.run(_cli(*common, "--out", out), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert out.read_bytes() == (tmp_path / "whole.json").read_bytes() and not partial.exists()
