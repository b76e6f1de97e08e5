"""The Ray executor: chunks served by workers of a Ray cluster, each an actor holding one engine.

Ray does the scheduling and the recovery: each worker is an actor restarted by Ray when its process dies
(``max_restarts``), and the chunk it was serving is run again by Ray on the restarted actor
(``max_task_retries``), so a killed worker costs time, never a row. The driver keeps a few chunks in flight
per worker and hands finished chunks back as they come; the pipeline records them in input order, so a run on
any number of workers writes the same samples file as ``--executor local``. Chunks are issued at most
``--max-ahead`` past the oldest unfinished one, so a stalled chunk bounds what the driver holds.

Where: no ``--ray-address`` starts a Ray local to this machine for the run and stops it after (``RAY_ADDRESS``
and clusters ``ray start`` left running are not joined); ``auto`` joins ``RAY_ADDRESS``, else the cluster
``ray start`` started on this machine; ``HOST:PORT`` that cluster. Before any worker starts, the cluster's
nodes must be able to hold every worker's CPUs and GPUs (one line if not: no GPU on a cluster without GPUs),
and the workers' resources are reserved together (a placement group) within ``--reserve-timeout-s``, so a
busy cluster is one line too, never an actor pending forever.

Workers build their engine from the run's :class:`~recoverlib.executors.base.EngineSpec` where they run (on
that node's devices); recoverlib must be installed in the cluster's Python. A cluster started apart from the
driver (``ray start``) gives workers its own environment, so the driver passes on the variables that steer
engines (``VLLM_*``, ``RECOVERLIB_*``, ``HF_*``, ``LD_PRELOAD``...), except secrets (a name with ``TOKEN``,
``KEY``, ``SECRET``, ``PASSWORD`` or ``CREDENTIAL`` in it, e.g. ``HF_TOKEN``): those only when ``--ray-env``
names them.
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
SECRET_MARKERS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "CREDENTIAL")


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide the Ray executor runs (each field is also a command-line option)."""

    address: str | None = setting(
        None,
        flag="--ray-address",
        help="ray: the cluster: HOST:PORT, or auto ($RAY_ADDRESS, else the one `ray start` started on this"
        " machine); default: a local Ray started for this run (RAY_ADDRESS is not read)",
    )
    workers: int = setting(2, help="ray: workers, each holding one engine")
    cpus_per_worker: float = setting(1.0, help="ray: CPUs reserved per worker")
    gpus_per_worker: float = setting(0.0, help="ray: GPUs per worker (vLLM's tensor parallel size inside it)")
    in_flight: int = setting(2, help="ray: chunks queued per worker")
    chunk_retries: int = setting(3, help="ray: times a chunk whose worker died runs again")
    max_ahead: int | None = setting(
        None, help="ray: chunks issued past the oldest unfinished one (bounds what the driver holds while one"
        " stalls; default 4 per worker and chunk in flight)"
    )
    reserve_timeout_s: float = setting(
        120.0, help="ray: seconds the cluster may take to give every worker its CPUs and GPUs"
    )
    ray_env: str | None = setting(
        None, help="ray: comma-separated environment variables the workers also get (secrets such as HF_TOKEN"
        " only reach workers named here)"
    )
    connect_timeout_s: float = setting(10.0, cli=False, help="seconds to reach a cluster's address")
    env: Mapping[str, str] = setting(cli=False, default_factory=dict, help="variables for the workers")

    def __post_init__(self):
        if self.workers < 1 or self.in_flight < 1 or self.chunk_retries < 0:
            raise RecoverlibError(f"ray executor: workers and in_flight must be >= 1, chunk_retries >= 0 (got"
                                  f" {self.workers}, {self.in_flight}, {self.chunk_retries})")
        if self.cpus_per_worker < 0 or self.gpus_per_worker < 0:
            raise RecoverlibError("ray executor: CPUs and GPUs per worker must be >= 0")
        if self.max_ahead is not None and self.max_ahead < 1:
            raise RecoverlibError(f"ray executor: max_ahead must be >= 1 (got {self.max_ahead})")
        if not self.reserve_timeout_s > 0:
            raise RecoverlibError("ray executor: the reserve timeout must be > 0")
        missing = [n for n in self.forwarded_names if n not in os.environ]
        if missing:
            raise RecoverlibError(f"--ray-env {', '.join(missing)}: not set here, so workers cannot get it")

    @property
    def forwarded_names(self) -> list[str]:
        """The variables ``--ray-env`` names."""
        return [n.strip() for n in (self.ray_env or "").split(",") if n.strip()]

    @property
    def ahead(self) -> int:
        """Chunks that may be issued past the oldest unfinished one."""
        return self.max_ahead or 4 * self.workers * self.in_flight


def import_ray():
    try:
        import ray
    except ImportError as err:
        raise RecoverlibError(f"--executor ray needs Ray ({err}): pip install 'recoverlib[ray]'") from None
    return ray


def is_secret(name: str) -> bool:
    """Whether a variable's name says it holds a secret (``HF_TOKEN``, ``RECOVERLIB_API_KEY``...)."""
    return any(marker in name.upper() for marker in SECRET_MARKERS)


def worker_env(config: RayConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables workers run with: the driver's that steer engines (no secrets), those ``ray_env``
    names, then ``config.env``."""
    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items() if k.startswith(FORWARDED_ENV) and not is_secret(k)}
    return {**env, **{n: environ[n] for n in config.forwarded_names if n in environ}, **config.env}


def placeable_workers(nodes: list[Mapping[str, float]], cpus: float, gpus: float) -> int:
    """How many workers of ``cpus`` CPUs and ``gpus`` GPUs the nodes' total resources can hold (pure)."""
    total = 0
    for resources in nodes:
        fits = [int(resources.get(name, 0) // need + 1e-9) for name, need in (("CPU", cpus), ("GPU", gpus))
                if need > 0]
        total += min(fits) if fits else 1 << 30
    return total


def check_placeable(nodes: list[Mapping[str, float]], config: RayConfig) -> None:
    """One line when the cluster's nodes cannot hold ``config.workers`` workers with their resources."""
    c = config
    if placeable_workers(nodes, c.cpus_per_worker, c.gpus_per_worker) >= c.workers:
        return
    has = {name: sum(n.get(name, 0) for n in nodes) for name in ("CPU", "GPU")}
    if c.gpus_per_worker > 0 and not has["GPU"]:
        raise RecoverlibError(
            f"--gpus-per-worker {c.gpus_per_worker:g}: the Ray cluster has no GPU ({has['CPU']:g} CPUs on"
            f" {len(nodes)} node(s)); use --gpus-per-worker 0 or a cluster with GPUs"
        )
    raise RecoverlibError(
        f"the Ray cluster cannot hold {c.workers} workers of {c.cpus_per_worker:g} CPU(s) and"
        f" {c.gpus_per_worker:g} GPU(s) ({has['CPU']:g} CPUs, {has['GPU']:g} GPUs on {len(nodes)} node(s)):"
        " lower --workers, --cpus-per-worker or --gpus-per-worker"
    )


def check_reachable(address: str, timeout: float) -> None:
    """A ``HOST:PORT`` address must accept a TCP connection (Ray itself retries for many minutes); one line
    if not."""
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
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
        self._group = None  # the placement group holding the workers' resources

    def chunk_rows(self, spec: EngineSpec) -> int:
        """Smaller chunks than one engine alone would take: enough of them to keep every worker busy."""
        return max(1, super().chunk_rows(spec) // 4)

    def connect(self):
        """Ray, connected to the configured cluster (started locally when no address is given)."""
        ray = import_ray()
        if ray.is_initialized():
            return ray
        address = self.config.address or "local"  # a fresh Ray: not RAY_ADDRESS nor a running `ray start`
        if address not in ("auto", "local"):
            check_reachable(address, self.config.connect_timeout_s)
        elif address == "local" and os.environ.get("RAY_ADDRESS"):
            log.warning("RAY_ADDRESS is set but --ray-address is not: a local Ray is started for this run"
                        " (--ray-address auto joins RAY_ADDRESS)")
        cpus = max(1, int(self.config.workers * self.config.cpus_per_worker))
        local = {"num_cpus": cpus} if address == "local" else {}
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, **local)
        except (ConnectionError, RuntimeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RecoverlibError(
                f"cannot join the Ray cluster at {address} ({first}); check --ray-address, or use"
                " --executor local"
            ) from None
        return ray

    def run(self, spec: EngineSpec, chunks: Sequence[Chunk], predict: PredictConfig,
            base: str | None) -> Iterator[tuple[Chunk, Samples]]:
        ray = self.connect()
        self._stop_actors(ray)
        self._actors = self._start_actors(ray, spec, predict, base)
        order = list(chunks)
        issued = 0  # chunks order[:issued] were sent
        running: dict = {}  # object ref -> (position in order, actor)
        per_actor = {id(a): 0 for a in self._actors}

        def feed():
            nonlocal issued
            for actor in self._actors:
                while per_actor[id(actor)] < self.config.in_flight and may_issue(
                        issued, len(order), [pos for pos, _ in running.values()], self.config.ahead):
                    running[actor.serve.remote(order[issued])] = (issued, actor)
                    issued += 1
                    per_actor[id(actor)] += 1

        feed()
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            pos, actor = running.pop(ready[0])
            per_actor[id(actor)] -= 1
            samples = self._result(ray, ready[0], order[pos])
            feed()
            yield order[pos], samples

    def _start_actors(self, ray, spec: EngineSpec, predict: PredictConfig, base: str | None) -> list:
        c = self.config
        env = worker_env(c)
        check_placeable([n["Resources"] for n in ray.nodes() if n.get("Alive")], c)
        options = {"num_cpus": c.cpus_per_worker, "num_gpus": c.gpus_per_worker, "max_restarts": -1,
                   "max_task_retries": c.chunk_retries, "runtime_env": {"env_vars": env}}
        strategies = self._reserve(ray)
        return [ray.remote(Worker).options(**options, **strategy).remote(spec, predict, base)
                for strategy in strategies]

    def _reserve(self, ray) -> list[dict]:
        """Every worker's resources reserved together (a placement group), within the reserve timeout; one
        ``options`` entry per worker placing it there."""
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        c = self.config
        bundle = {k: v for k, v in (("CPU", c.cpus_per_worker), ("GPU", c.gpus_per_worker)) if v > 0}
        if not bundle:  # nothing to reserve: nothing can keep a worker pending
            return [{} for _ in range(c.workers)]
        self._group = placement_group([bundle] * c.workers, strategy="SPREAD")
        ready, _ = ray.wait([self._group.ready()], timeout=c.reserve_timeout_s)
        if not ready:
            remove_placement_group(self._group)
            self._group = None
            free = ray.available_resources()
            raise RecoverlibError(
                f"the Ray cluster did not give {c.workers} workers {c.cpus_per_worker:g} CPU(s) and"
                f" {c.gpus_per_worker:g} GPU(s) each within {c.reserve_timeout_s:g} s (free now:"
                f" {free.get('CPU', 0):g} CPUs, {free.get('GPU', 0):g} GPUs; other jobs hold the rest): wait"
                " for them, or lower --workers or the per-worker resources"
            )
        return [{"scheduling_strategy": PlacementGroupSchedulingStrategy(self._group, i)}
                for i in range(c.workers)]

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
        from ray.util.placement_group import remove_placement_group

        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []
        if self._group is not None:
            remove_placement_group(self._group)
            self._group = None

    def close(self) -> None:
        ray = import_ray()
        if not ray.is_initialized():
            return
        self._stop_actors(ray)
        ray.shutdown()  # leaves a cluster given by address running; stops the local one this run started


def may_issue(issued: int, total: int, running: list[int], ahead: int) -> bool:
    """Whether chunk ``issued`` (positions in input order) may be sent now: there is one, and it is fewer
    than ``ahead`` past the oldest chunk still running (pure)."""
    return issued < total and issued - min(running, default=issued) < ahead


def _recoverlib_error_in(text: str) -> str | None:
    """The one-line RecoverlibError a worker raised while starting, as Ray reports it inside its own
    message."""
    marker = "RecoverlibError: "
    return text.split(marker, 1)[1].splitlines()[0].strip() if marker in text else None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
