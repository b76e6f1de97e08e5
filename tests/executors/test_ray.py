"""``--executor ray`` on a real local cluster (two workers): the same bytes as ``--executor local``, a worker
killed mid-run costs nothing, a killed driver resumes, and no cluster at the address is one line."""

from __future__ import annotations

import filecmp
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from recoverlib.engines import SamplingConfig
from recoverlib.errors import RecoverlibError
from recoverlib.executors.ray import RayConfig, RayExecutor
from recoverlib.pipeline import PredictConfig, predict

from .conftest import free_port

CONFIG = PredictConfig(SamplingConfig(samples=3, max_new_tokens=12, seed=5), chunk_rows=2)


@pytest.fixture(scope="module")
def rows_csv(sample_csv, tmp_path_factory):
    """40 rows (the sample rows again and again, new ids), so a run has 20 chunks."""
    frame = pd.read_csv(sample_csv, dtype=str)
    big = pd.concat([frame] * 4, ignore_index=True).head(40)
    big["id"] = [f"row{i:03d}" for i in range(len(big))]
    path = tmp_path_factory.mktemp("rows") / "rows.csv"
    big.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def adapters(tiny_adapters):
    return {k: tiny_adapters[k] for k in ("tiny-a", "tiny-b")}


@pytest.fixture(scope="module")
def local_run(tiny_model, adapters, rows_csv, tmp_path_factory):
    """The reference: the same job through ``--executor local``."""
    out = tmp_path_factory.mktemp("local")
    predict(tiny_model, rows_csv, out / "sub.csv", adapters=adapters, engine="hf", config=CONFIG,
            samples_file=out / "s.jsonl")
    return out


def _same(a: Path, b: Path) -> None:
    for name in ("s.jsonl", "sub.csv"):
        assert filecmp.cmp(a / name, b / name, shallow=False), name


def _ray_workers() -> set[int]:
    return {
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [""])[0].startswith("ray::Worker")
    }


def test_two_workers_write_what_one_process_writes(
    ray_cluster, tiny_model, adapters, rows_csv, local_run, tmp_path
):
    with RayExecutor(RayConfig(address=ray_cluster, workers=2)) as ray_executor:
        done = predict(
            tiny_model,
            rows_csv,
            tmp_path / "sub.csv",
            adapters=adapters,
            engine="hf",
            config=CONFIG,
            samples_file=tmp_path / "s.jsonl",
            executor=ray_executor,
            close_engine=False,
        )
        pids = ray_executor.worker_pids()
    assert done.rows == 40 and len(set(pids)) == 2 and os.getpid() not in pids
    _same(tmp_path, local_run)


def test_a_worker_killed_mid_run_loses_nothing(
    ray_cluster, tiny_model, adapters, rows_csv, local_run, tmp_path
):
    samples = tmp_path / "s.jsonl"
    killed: list[int] = []

    def kill_one_worker():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            lines = samples.read_text().count("\n") if samples.is_file() else 0
            workers = _ray_workers()
            if lines >= 4 and workers:
                pid = min(workers)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    with RayExecutor(RayConfig(address=ray_cluster, workers=2, chunk_retries=3)) as ray_executor:
        predict(tiny_model, rows_csv, tmp_path / "sub.csv", adapters=adapters, engine="hf", config=CONFIG,
                samples_file=samples, executor=ray_executor, close_engine=False)
        after = set(ray_executor.worker_pids())
    killer.join()
    assert killed and killed[0] not in after  # a worker died mid-run and Ray put a new one in its place
    _same(tmp_path, local_run)


def test_the_driver_killed_then_resumed_writes_the_same_bytes(
    ray_cluster, tiny_model, adapters, rows_csv, local_run, tmp_path
):
    argv = [
        sys.executable,
        "-m",
        "recoverlib.cli",
        "predict",
        "--model",
        str(tiny_model),
        "--engine",
        "hf",
        *[a for name, path in adapters.items() for a in ("--adapter", f"{name}={path}")],
        "--samples",
        "3",
        "--max-new-tokens",
        "12",
        "--seed",
        "5",
        "--chunk-rows",
        "2",
        "--input",
        str(rows_csv),
        "--out",
        str(tmp_path / "sub.csv"),
        "--samples-file",
        str(tmp_path / "s.jsonl"),
        "--executor",
        "ray",
        "--ray-address",
        ray_cluster,
        "--workers",
        "2",
    ]
    driver = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = tmp_path / "s.jsonl"
    deadline = time.monotonic() + 300
    while driver.poll() is None and time.monotonic() < deadline:
        if samples.is_file() and samples.read_text().count("\n") >= 4:
            break
        time.sleep(0.05)
    assert driver.poll() is None, f"finished before it could be killed: {driver.stderr.read()[-1500:]}"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert not (tmp_path / "sub.csv").exists() and 4 <= samples.read_text().count("\n") < 40
    resumed = subprocess.run([*argv, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _same(tmp_path, local_run)


def test_no_cluster_at_the_address_is_one_line(tiny_model, rows_csv, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(
        RecoverlibError, match=f"no Ray cluster at {address}.*ray start --head.*--executor local"
    ):
        predict(tiny_model, rows_csv, tmp_path / "sub.csv", engine="hf", config=CONFIG,
                executor=RayExecutor(RayConfig(address=address)))
    assert time.monotonic() - start < 30 and not (tmp_path / "sub.csv").exists()


@pytest.mark.slow
def test_vllm_workers_write_what_one_process_writes(ray_cluster, tiny_model, adapters, rows_csv, tmp_path):
    pytest.importorskip("vllm")
    for name, executor in (
        ("local", "local"),
        ("ray", RayExecutor(RayConfig(address=ray_cluster, workers=2))),
    ):
        (tmp_path / name).mkdir()
        predict(
            tiny_model,
            rows_csv,
            tmp_path / name / "sub.csv",
            adapters=adapters,
            engine="vllm",
            config=CONFIG,
            samples_file=tmp_path / name / "s.jsonl",
            executor=executor,
        )
        if name == "ray":
            executor.close()
    _same(tmp_path / "ray", tmp_path / "local")
