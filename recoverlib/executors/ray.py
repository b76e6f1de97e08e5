"""The Ray executor: chunks served by workers of a Ray cluster, each an actor holding one engine.

Ray does the scheduling and the recovery: each worker is an actor restarted by Ray when its process dies
(``max_restarts``), and the chunk it was serving is run again by Ray on the restarted actor
(``max_task_retries``), so a killed worker costs time, never a row. The driver keeps a few chunks in flight
per worker and hands finished chunks back as they come; the pipeline records them in input order, so a run on
any number of workers writes the same samples file as ``--executor local``.

Workers build their engine from the run's :class:`~recoverlib.executors.base.EngineSpec` where they run (on
that node's devices); recoverlib must be installed in the cluster's Python. A cluster started apart from the
driver (``ray start``) gives workers its own environment, so the driver passes on the variables that steer
engines (``VLLM_*``, ``RECOVERLIB_*``, ``HF_*``, ``LD_PRELOAD``...). With no address, a Ray instance local to
this machine is started for the run and stopped after it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from recoverlib.errors import RecoverlibError
from recoverlib.executors.base import EngineSpec, Executor
from recoverlib.pipeline.chunks import Chunk
from recoverlib.pipeline.config import PredictConfig
from recoverlib.pipeline.sample import ChunkSampler, Samples
from recoverlib.settings import setting

log = logging.getLogger("recoverlib")

FORWARDED_ENV = ("VLLM_", "RECOVERLIB_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "GPTQMODEL_", "LD_PRELOAD",
                 "PYTHONHASHSEED")


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide the Ray executor runs (each field is also a command-line option)."""

    address: str | None = setting(
        None,
        flag="--ray-address",
        help="ray: the cluster (auto: the one on this machine, or HOST:PORT; default: a"
        " local Ray started for the run)",
    )
    workers: int = setting(2, help="ray: workers, each holding one engine")
    cpus_per_worker: float = setting(1.0, help="ray: CPUs reserved per worker")
    gpus_per_worker: float = setting(0.0, help="ray: GPUs per worker (vLLM's tensor parallel size inside it)")
    in_flight: int = setting(2, help="ray: chunks queued per worker")
    chunk_retries: int = setting(3, help="ray: times a chunk whose worker died runs again")
    connect_timeout_s: float = setting(10.0, cli=False, help="seconds to reach a cluster's address")
    env: Mapping[str, str] = setting(cli=False, default_factory=dict, help="variables for the workers")

    def __post_init__(self):
        if self.workers < 1 or self.in_flight < 1 or self.chunk_retries < 0:
            raise RecoverlibError(f"ray executor: workers and in_flight must be >= 1, chunk_retries >= 0 (got"
                                  f" {self.workers}, {self.in_flight}, {self.chunk_retries})")
        if self.cpus_per_worker < 0 or self.gpus_per_worker < 0:
            raise RecoverlibError("ray executor: CPUs and GPUs per worker must be >= 0")


def import_ray():
    try:
        import ray
    except ImportError as err:
        raise RecoverlibError(f"--executor ray needs Ray ({err}): pip install ray==2.60.0") from None
    return ray


def worker_env(config: RayConfig) -> dict[str, str]:
    """The variables workers run with: the driver's that steer engines, then ``config.env``."""
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    return {**env, **config.env}


def check_reachable(address: str, timeout: float) -> None:
    """A ``HOST:PORT`` address must accept a TCP connection (Ray itself retries for many minutes); one line
    if not."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise RecoverlibError(f"--ray-address {address!r}: give auto or HOST:PORT")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as err:
        raise RecoverlibError(f"no Ray cluster at {address} ({err.strerror or err}): start one with"
                              f" `ray start --head --port {port}`, or use --executor local") from None


class Worker:
    """One Ray actor: an engine built where it runs, serving chunks (see :class:`ChunkSampler`)."""

    def __init__(self, spec: EngineSpec, predict: PredictConfig, base: str | None):
        self.sampler = ChunkSampler(spec.build(), predict, base)

    def serve(self, chunk: Chunk) -> Samples:
        return self.sampler(chunk)

    def pid(self) -> int:
        return os.getpid()


class RayExecutor(Executor):
    """Chunks over ``config.workers`` Ray actors (see the module docstring)."""

    name = "ray"
    config_type = RayConfig

    def __init__(self, config: RayConfig | None = None):
        super().__init__(config)
        self._actors: list = []

    def chunk_rows(self, spec: EngineSpec) -> int:
        """Smaller chunks than one engine alone would take: enough of them to keep every worker busy."""
        return max(1, super().chunk_rows(spec) // 4)

    def connect(self):
        """Ray, connected to the configured cluster (started locally when no address is given)."""
        ray = import_ray()
        if ray.is_initialized():
            return ray
        address = self.config.address
        if address and address != "auto":
            check_reachable(address, self.config.connect_timeout_s)
        cpus = max(1, int(self.config.workers * self.config.cpus_per_worker))
        local = {} if address else {"num_cpus": cpus}
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, **local)
        except (ConnectionError, RuntimeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RecoverlibError(
                f"cannot join the Ray cluster at {address or 'a new local instance'} ({first});"
                " check --ray-address, or use --executor local"
            ) from None
        return ray

    def run(self, spec: EngineSpec, chunks: Sequence[Chunk], predict: PredictConfig,
            base: str | None) -> Iterator[tuple[Chunk, Samples]]:
        ray = self.connect()
        self._stop_actors(ray)
        self._actors = self._start_actors(ray, spec, predict, base)
        queue = list(chunks)
        running: dict = {}  # object ref -> (chunk, actor)
        per_actor = {id(a): 0 for a in self._actors}

        def feed():
            for actor in self._actors:
                while queue and per_actor[id(actor)] < self.config.in_flight:
                    chunk = queue.pop(0)
                    running[actor.serve.remote(chunk)] = (chunk, actor)
                    per_actor[id(actor)] += 1

        feed()
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            chunk, actor = running.pop(ready[0])
            per_actor[id(actor)] -= 1
            samples = self._result(ray, ready[0], chunk)
            feed()
            yield chunk, samples

    def _start_actors(self, ray, spec: EngineSpec, predict: PredictConfig, base: str | None) -> list:
        c = self.config
        remote = ray.remote(Worker).options(
            num_cpus=c.cpus_per_worker, num_gpus=c.gpus_per_worker, max_restarts=-1,
            max_task_retries=c.chunk_retries, runtime_env={"env_vars": worker_env(c)})
        return [remote.remote(spec, predict, base) for _ in range(c.workers)]

    def _result(self, ray, ref, chunk: Chunk) -> Samples:
        """A chunk's samples; a worker's failure is one line (its own one-line error where it has one)."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

        rows = f"chunk {chunk.index} (rows {chunk.start}-{chunk.start + len(chunk.rows) - 1})"
        try:
            return ray.get(ref)
        except RayTaskError as err:
            if isinstance(err.cause, RecoverlibError):
                raise RecoverlibError(str(err.cause)) from None  # a setting to change, said by the worker
            raise RecoverlibError(
                f"{rows} failed on a Ray worker: {type(err.cause).__name__}: {err.cause}"
            ) from None
        except (ActorDiedError, ActorUnavailableError) as err:
            said = _recoverlib_error_in(str(err))
            if said:  # the worker's engine could not start: the user's to fix
                raise RecoverlibError(said) from None
            raise RecoverlibError(
                f"{rows}: its Ray worker died {self.config.chunk_retries + 1} time(s) or could not"
                f" start ({_first_line(err)}); finished chunks are kept: --resume continues"
            ) from None

    def worker_pids(self) -> list[int]:
        """The process id of each worker (tests kill one)."""
        ray = import_ray()
        return ray.get([a.pid.remote() for a in self._actors])

    def _stop_actors(self, ray) -> None:
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []

    def close(self) -> None:
        ray = import_ray()
        if not ray.is_initialized():
            return
        self._stop_actors(ray)
        ray.shutdown()  # leaves a cluster given by address running; stops the local one this run started


def _recoverlib_error_in(text: str) -> str | None:
    """The one-line RecoverlibError a worker raised while starting, as Ray reports it inside its own
    message."""
    marker = "RecoverlibError: "
    return text.split(marker, 1)[1].splitlines()[0].strip() if marker in text else None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
