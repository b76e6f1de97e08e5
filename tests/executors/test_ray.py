"""``--executor ray`` on a real local cluster (two workers): the same bytes as ``--executor local``, a worker
killed mid-run costs nothing, a killed driver resumes, and no cluster at the address is one line."""

from __future__ import annotations

import filecmp
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import psutil
import pytest

from recoverlib.engines import SamplingConfig
from recoverlib.errors import RecoverlibError
from recoverlib.executors.ray import RayConfig, RayExecutor
from recoverlib.io import Row
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


# -- what the driver decides before and while workers run (pure, then on the real cluster)
# ----------------------------------------------------------------------------------------------------------


def test_workers_placeable_on_the_nodes():
    from recoverlib.executors.ray import placeable_workers

    nodes = [{"CPU": 2.0}, {"CPU": 4.0, "GPU": 1.0}]
    assert placeable_workers(nodes, 1, 0) == 6
    assert placeable_workers(nodes, 1, 1) == 1 and placeable_workers(nodes, 0.5, 0) == 12
    assert placeable_workers(nodes, 0, 0) > 100  # nothing asked: nothing can keep a worker pending
    assert placeable_workers([{"CPU": 1.0}], 0.3, 0) == 3


@pytest.mark.parametrize(("config", "said"), [
    (RayConfig(workers=1, gpus_per_worker=1), "--gpus-per-worker 1: the Ray cluster has no GPU (2 CPUs on"),
    (RayConfig(workers=3, cpus_per_worker=1), "cannot hold 3 workers of 1 CPU(s) and 0 GPU(s) (2 CPUs, 0"),
])
def test_what_the_cluster_cannot_hold_is_refused_up_front(config, said):
    from recoverlib.executors.ray import check_placeable

    with pytest.raises(RecoverlibError, match=re.escape(said)):
        check_placeable([{"CPU": 2.0, "memory": 1e9}], config)
    check_placeable([{"CPU": 2.0}], RayConfig(workers=2))


def test_chunks_are_issued_at_most_max_ahead_past_the_oldest_running_one():
    from recoverlib.executors.ray import may_issue

    assert may_issue(issued=0, total=5, running=[], ahead=2)
    assert may_issue(1, 5, running=[0], ahead=2) and not may_issue(2, 5, running=[0, 1], ahead=2)
    assert may_issue(2, 5, running=[1], ahead=2)  # chunk 0 finished: the window moves
    assert not may_issue(5, 5, running=[], ahead=2)  # none left
    assert RayConfig(workers=3, in_flight=2).ahead == 24 and RayConfig(max_ahead=5).ahead == 5


def test_a_stalled_chunk_bounds_what_the_driver_holds(monkeypatch):
    """The driver's loop against a stand-in Ray where chunk 0 finishes last: never more than ``max_ahead``
    chunks are out past it, so the pipeline holds at most that many early finishers."""
    from recoverlib.pipeline.chunks import plan_chunks
    from recoverlib.pipeline.record import InOrder

    chunks = plan_chunks([Row(str(i), "a", "b") for i in range(40)], 1)
    fake = StalledRay(stalled=0)
    executor = RayExecutor(RayConfig(workers=2, in_flight=2, max_ahead=6))
    monkeypatch.setattr(executor, "connect", lambda: fake)
    monkeypatch.setattr(executor, "_start_actors", lambda *a: [FakeActor(fake), FakeActor(fake)])
    monkeypatch.setattr(executor, "_result", lambda ray, ref, chunk: {"chunk": chunk.index})
    order, most_held = InOrder(chunks), 0
    for chunk, got in executor.run(None, chunks, PredictConfig(), None):
        order.add(chunk, got)
        most_held = max(most_held, order.held)
        assert max(fake.sent) - min(fake.running_positions(), default=max(fake.sent)) < 6
    assert order.held == 0 and sorted(fake.sent) == list(range(40)) and most_held == 5


class StalledRay:
    """Ray's ``wait`` as the driver uses it: refs finish in the order sent, except ``stalled``, which finishes
    only when nothing else runs."""

    def __init__(self, stalled: int):
        self.stalled, self.sent, self.refs = stalled, [], {}

    def running_positions(self):
        return list(self.refs.values())

    def wait(self, refs, num_returns=1):
        done = [r for r in refs if self.refs[r] != self.stalled] or refs
        self.refs.pop(done[0])
        return [done[0]], []

    def kill(self, actor, no_restart=True):
        pass


class FakeActor:
    def __init__(self, ray):
        self.serve = SimpleNamespace(remote=self._remote)
        self.ray = ray

    def _remote(self, chunk):
        ref = object()
        self.ray.refs[ref] = chunk.index
        self.ray.sent.append(chunk.index)
        return ref


def test_secrets_reach_workers_only_when_named(monkeypatch):
    from recoverlib.executors.ray import worker_env

    env = {"HF_TOKEN": "t", "HF_HOME": "/h", "RECOVERLIB_API_KEY": "k", "VLLM_CPU_KVCACHE_SPACE": "1",
           "HOME": "/root", "MY_SETTING": "x"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    got = worker_env(RayConfig(), env)
    assert got == {"HF_HOME": "/h", "VLLM_CPU_KVCACHE_SPACE": "1"}
    asked = worker_env(RayConfig(ray_env="HF_TOKEN, MY_SETTING"), env)
    assert asked == {**got, "HF_TOKEN": "t", "MY_SETTING": "x"}


def test_a_busy_cluster_is_one_line_after_the_reserve_timeout(ray_cluster, tiny_model, rows_csv, tmp_path):
    """Another job holds the cluster's 2 CPUs: the workers' reservation waits ``reserve_timeout_s``, then one
    line (no actor left pending)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    executor = RayExecutor(RayConfig(address=ray_cluster, workers=2, reserve_timeout_s=3))
    executor.connect()
    other = placement_group([{"CPU": 2}])
    ray.get(other.ready(), timeout=60)
    try:
        start = time.monotonic()
        said = r"did not give 2 workers 1 CPU\(s\) and 0 GPU\(s\) each within 3 s \(free now: 0 CPUs"
        with pytest.raises(RecoverlibError, match=said):
            predict(tiny_model, rows_csv, tmp_path / "sub.csv", engine="hf", config=CONFIG, executor=executor)
        assert time.monotonic() - start < 30 and not (tmp_path / "sub.csv").exists()
    finally:
        remove_placement_group(other)
        executor.close()


def test_no_address_starts_a_local_ray_even_with_ray_address_set(ray_cluster, monkeypatch, caplog):
    import ray

    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)
    executor = RayExecutor(RayConfig(workers=1))
    try:
        executor.connect()
        assert ray.get_runtime_context().gcs_address != ray_cluster
        assert "a local Ray is started for this run (--ray-address auto joins RAY_ADDRESS)" in caplog.text
    finally:
        executor.close()
