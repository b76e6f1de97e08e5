"""A child process tree that dies with the Python process (and the object) that started it.

A server recoverlib starts (``recoverlib serve``, :class:`~recoverlib.serve.VllmServer`) must not outlive its
owner, whatever ends the owner: a handled signal, SIGKILL, the OOM killer, a closed terminal's SIGHUP, or
an owner that simply drops the object. Three mechanisms, one for each way the owner can go:

- **the owner dies without running any code** (SIGKILL, OOM): Linux's parent-death signal. The child is
  started through a three-line launcher that calls ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` and then ``exec``\\ s
  the real command (no ``preexec_fn``, which is unsafe in a threaded parent); the setting survives
  ``exec``. A SIGTERM'd vLLM API server shuts its engine core and workers down itself, and they also go when
  it dies by SIGKILL (vLLM's engine core watches its parent and its workers watch the core; seen on vLLM
  0.32). Linux sends the signal when the *thread* that started the child ends, so start it from a thread
  that lives as long as the server (the main thread, as the CLI does).
- **the owner drops the object or its interpreter exits**: a :func:`weakref.finalize` stops the tree.
- **the owner stops it** (:meth:`OwnedProcess.stop`, SIGINT/SIGTERM/SIGHUP handled by ``recoverlib serve``):
  SIGTERM to the child's process group, SIGKILL to what is left after a grace period.

The child runs in a session (and process group) of its own, so a terminal's Ctrl-C reaches only the owner,
which stops the group in order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

# argv[1]: the owner's pid, argv[2]: the signal, argv[3:]: the command. A parent already gone by the time the
# prctl ran (the race the prctl man page describes) ends the launcher at once.
_LAUNCHER = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, int(sys.argv[2]), 0, 0, 0)  # PR_SET_PDEATHSIG\n"
    "os.getppid() == int(sys.argv[1]) or sys.exit(0)\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)


def dying_with_this_process(argv: Sequence[str], death_signal: int = signal.SIGTERM) -> list[str]:
    """``argv`` started so that it gets ``death_signal`` when this process (the thread that starts it) dies
    (pure: the command :class:`OwnedProcess` runs)."""
    return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), str(int(death_signal)), *argv]


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on ``host:port`` already (a bind as a server makes it, address reuse on)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no owner
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _stop_group(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to the process group of ``process``, SIGKILL to what is left after ``grace_s``."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left (the leader may be gone)
    process.wait()


class OwnedProcess:
    """``argv`` with ``env`` added, in a process group of its own that dies with its owner (see the module
    docstring). ``log``: a file its output is appended to (None: this process's stderr)."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None,
                 log: str | Path | None = None, grace_s: float = 20.0):
        self.argv, self.env, self.log, self.grace_s = list(argv), dict(env or {}), log, grace_s
        self.process: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None

    def start(self) -> OwnedProcess:
        """Start the child (once)."""
        if self.process is not None:
            return self
        out: IO | None = open(self.log, "ab") if self.log else None  # noqa: SIM115 (the child holds it)
        try:
            self.process = subprocess.Popen(
                dying_with_this_process(self.argv), env={**os.environ, **self.env},
                stdout=out or sys.stderr, stderr=subprocess.STDOUT if out else None, start_new_session=True,
            )
        finally:
            if out:
                out.close()
        self._finalizer = weakref.finalize(self, _stop_group, self.process, self.grace_s)
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process else None

    def wait(self) -> int:
        """Until the child exits by itself; its exit status."""
        return self.process.wait() if self.process else 0

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child's process group (no wait)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    def stop(self) -> None:
        """Stop the child and every process it started: SIGTERM to its group, then SIGKILL."""
        if self._finalizer is not None:
            self._finalizer()  # runs once: a later stop, or the object's collection, does nothing
