"""A real local Ray cluster for the executor tests: started by the tests on 127.0.0.1 on ports of their own,
used, and stopped (``ray start --block`` tears its processes down when it is terminated)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray is not installed")

# Ray 2.60 turns token authentication on for a cluster when ~/.ray/auth_token exists (any earlier local
# ray.init writes it); the test cluster and its drivers run without it.
os.environ["RAY_AUTH_MODE"] = "disabled"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """``127.0.0.1:PORT`` of a head node with 2 CPUs (two workers), this venv's Python in its workers."""
    port, ports = free_port(), [free_port() for _ in range(7)]
    temp = Path("/tmp") / f"ray-test-{port}"  # short: Ray's socket paths must fit in 107 bytes
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--node-manager-port={ports[0]}",
        f"--object-manager-port={ports[1]}",
        "--include-dashboard=false",
        f"--dashboard-agent-listen-port={ports[2]}",
        f"--dashboard-agent-grpc-port={ports[3]}",
        f"--runtime-env-agent-port={ports[4]}",
        f"--metrics-export-port={ports[5]}",
        f"--min-worker-port={ports[6]}",
        f"--max-worker-port={ports[6] + 60}",
        "--num-cpus=2",
        "--object-store-memory=300000000",
        "--disable-usage-stats",
        f"--temp-dir={temp}",
    ]
    log = tmp_path_factory.mktemp("ray") / "ray-start.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, env=os.environ.copy(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while not _listening(port):
        assert proc.poll() is None and time.monotonic() < deadline, (
            f"ray start failed: {log.read_text()[-2000:]}"
        )
        time.sleep(0.1)
    yield f"127.0.0.1:{port}"
    proc.send_signal(signal.SIGTERM)  # --block: ray stops every process it started
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
