"""A child process tree that dies with its owner: owners killed with SIGKILL or dropping the object, a
grandchild in the child's group, and the port check ``recoverlib serve`` makes first (stand-in children: the
real server is killed through ``recoverlib serve`` in tests/engines/test_openai.py)."""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from recoverlib.owned_process import OwnedProcess, dying_with_this_process, port_in_use

# A stand-in server: a child that starts a grandchild (in its group) and waits.
CHILD = [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c',"
         " 'import time; time.sleep(120)']); time.sleep(120)"]
# One process: what the parent-death signal reaches (vLLM's engine core and workers go with its API server
# by vLLM's own watch: tests/engines/test_openai.py kills `recoverlib serve` and finds nothing left).
ALONE = [sys.executable, "-c", "import time; time.sleep(120)"]


def _gone(pids: list[int], within_s: float) -> float:
    """Seconds until none of ``pids`` is alive (zombies count as gone); fails after ``within_s``."""
    start = time.monotonic()
    while time.monotonic() - start < within_s:
        alive = [p for p in pids if _running(p)]
        if not alive:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"still running after {within_s} s: {alive}")


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _tree(pid: int, size: int) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            kids = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            break
        if len(kids) >= size - 1:
            return [pid, *(k.pid for k in kids)]
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not start its children")


def test_the_command_goes_through_the_death_signal_launcher():
    argv = dying_with_this_process(["/bin/true", "x"], signal.SIGTERM)
    assert argv[0] == sys.executable and argv[3:] == [str(os.getpid()), str(int(signal.SIGTERM)), "/bin/true",
                                                       "x"]
    assert "prctl(1" in argv[2]  # PR_SET_PDEATHSIG


@pytest.mark.parametrize("how", ["SIGKILL", "SIGHUP"])
def test_the_tree_dies_with_an_owner_killed_without_warning(how, tmp_path):
    # SIGHUP's default action restored: under nohup (or any parent ignoring it) the owner inherits SIG_IGN
    # and would outlive the signal; a user's terminal closing delivers it with the default action
    owner_code = textwrap.dedent(f"""
        import signal, sys, time
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        from recoverlib.owned_process import OwnedProcess
        child = OwnedProcess({ALONE!r}).start()
        print(child.pid, flush=True)
        time.sleep(120)
    """)
    owner = subprocess.Popen([sys.executable, "-c", owner_code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})
    pid = int(owner.stdout.readline())
    tree = _tree(pid, 1)
    owner.send_signal(getattr(signal, how))  # no handler: the owner dies at once, running no code
    owner.wait(30)
    assert _gone(tree, within_s=30) < 30


def test_the_tree_dies_with_the_object_that_started_it():
    child = OwnedProcess(CHILD).start()
    tree = _tree(child.pid, 2)
    del child
    gc.collect()
    _gone(tree, within_s=30)


def test_stop_ends_the_group_and_is_idempotent():
    child = OwnedProcess(CHILD, grace_s=5).start()
    tree = _tree(child.pid, 2)
    child.stop()
    child.stop()
    _gone(tree, within_s=10)
    assert not child.alive() and child.returncode == -signal.SIGTERM


def test_a_port_someone_listens_on_is_in_use():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert port_in_use("127.0.0.1", port) and port_in_use("0.0.0.0", port)
    assert not port_in_use("127.0.0.1", port)
