"""OpenAIEngine: the pipeline against any OpenAI-compatible server that serves the base and the adapters by
name.

vLLM's server (``recoverlib serve``) is the one it is made for: ``/v1/completions`` with ``model`` = the
adapter's name (the base's for base requests), the prompts as token ids, and every sampling field sent
explicitly (a field left out would take the server's defaults): ``n``, ``seed``, ``temperature``, ``top_p``
and the rest as the in-process engine uses them. Before any row, ``/v1/models`` must list every adapter asked
for.

Repeatable by design: a chunk's prompts go in one request per adapter, as a list, named a group in
``vllm_xargs``: recoverlib's vLLM plugin (loaded by any vLLM server where recoverlib is installed,
``recoverlib serve`` among them) starts a group's prompts in one step, so the server's batches, and so its
numerics, do not depend on how fast its API process hands them over (on a loaded machine they did: 19 of 30
seeded runs changed a sample). The request's seed comes from the chunk's first row and the adapter, as the HF
engine seeds a batch (vLLM gives every prompt of a request the seed, and sample ``j`` of a prompt seed +
``j``). With ``concurrency`` 1 (the default) each server gets one request at a time, and seeded sampling
repeats byte for byte while nothing else uses it, which ``--resume`` relies on. With more, requests share a
server's batches by arrival time, and seeded samples may change from run to run (said once). Greedy
predictions equal the in-process vLLM engine's either way. Several servers of the same model (``--server-url``
with comma-separated URLs) share the requests, each at ``concurrency``.
"""

from __future__ import annotations

import logging
import queue
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from recoverlib.adapters import AdapterInfo, read_adapter
from recoverlib.engines.base import Engine, Prompts, Samples, SamplingConfig, repeat_greedy
from recoverlib.engines.openai_client import RemoteTokenizer, ServerClient
from recoverlib.errors import RecoverlibError
from recoverlib.settings import setting
from recoverlib.vllm_plugin.whole_requests import group_xargs

log = logging.getLogger("recoverlib")


@dataclass(frozen=True)
class OpenAIConfig:
    """How to reach the server (each field is also a command-line option)."""

    server_url: str | None = setting(
        None,
        help="openai: the server's URL (http://HOST:PORT, /v1 optional); several"
        " servers of the same model: comma-separated",
    )
    api_key: str | None = setting(None, help="openai: the server's API key")
    concurrency: int = setting(
        1,
        help="openai: requests in flight per server (1 repeats seeded sampling byte for"
        " byte; more lets a server batch them by arrival time)",
    )
    retries: int = setting(
        5, help="openai: retries of a request on a connection error, 429 or 5xx (with backoff)"
    )
    timeout_s: float = setting(600.0, help="openai: seconds one request may take")
    backoff_s: float = setting(1.0, cli=False, help="first retry's wait, doubled at each retry")

    def __post_init__(self):
        if self.concurrency < 1 or self.retries < 0 or not self.timeout_s > 0:
            raise RecoverlibError("openai: concurrency must be >= 1, retries >= 0 and the timeout > 0")


def adapter_infos(adapters: Mapping[str, str | Path]) -> dict[str, AdapterInfo]:
    """What is known here of adapters a server serves: a local PEFT folder is read (its prime and template), a
    name without a folder here is served as it is."""
    out = {}
    for name, path in adapters.items():
        if path and Path(path).is_dir():
            out[name] = read_adapter(name, path)
        else:
            out[name] = AdapterInfo(name=name, path=Path(str(path or name)), rank=0, target_modules=())
    return out


class OpenAIEngine(Engine):
    """An OpenAI-compatible server's completions (see the module docstring). ``model``: the base model's
    folder here (its tokenizer fits the prompts), or its name on the server (the server's ``/tokenize``
    does)."""

    name = "openai"
    config_type = OpenAIConfig
    chunk_rows = 256

    def __init__(self, model: str | Path, adapters: Mapping[str, str | Path] | None = None,
                 config: OpenAIConfig | None = None):
        self.config = config or OpenAIConfig()
        if not self.config.server_url:
            raise RecoverlibError("--engine openai needs --server-url (the server's URL, e.g. http://127.0.0.1:8000)")
        c = self.config
        urls = [u.strip() for u in c.server_url.split(",") if u.strip()]
        self.clients = [ServerClient(u, c.api_key, c.retries, c.timeout_s, c.backoff_s) for u in urls]
        self.adapters = adapter_infos(adapters or {})
        served = {self._check_served(client, str(model)) for client in self.clients}
        if len(served) > 1:
            raise RecoverlibError(
                f"the servers {', '.join(urls)} serve different models or contexts: {sorted(served)}"
            )
        self.base_model, self._max_len = served.pop()
        # a free slot per (server, request in flight): each request takes one and gives it back
        self._slots: queue.Queue = queue.Queue()
        for _ in range(c.concurrency):
            for client in self.clients:
                self._slots.put(client)
        folder = Path(model)
        self._tokenizer = _local_tokenizer(folder) if (folder / "config.json").is_file() else \
            RemoteTokenizer(self.clients[0], self.base_model)
        if c.concurrency > 1:
            log.warning(
                "openai: %d requests in flight share the server's batches by arrival time, so seeded samples"
                " may differ from run to run (--concurrency 1 repeats them)",
                c.concurrency,
            )

    def _check_served(self, client: ServerClient, model: str) -> tuple[str, int]:
        """The server's name for the base and its context; every adapter asked for must be listed (one
        line)."""
        cards = client.models()
        bases = [c for c in cards if not c.get("parent")]
        named = [c for c in bases if model in (c.get("id"), c.get("root"))] or \
                [c for c in bases if Path(str(c.get("root", ""))).resolve() == Path(model).resolve()]
        base = named[0] if named else (bases[0] if len(bases) == 1 else None)
        if base is None:
            raise RecoverlibError(
                f"the server at {client.root} serves {[c.get('id') for c in bases]}, not {model}"
            )
        served = {c.get("id") for c in cards}
        missing = sorted(set(self.adapters) - served)
        if missing:
            raise RecoverlibError(
                f"the server at {client.root} does not serve adapter(s) {', '.join(missing)}"
                f" (it serves {', '.join(sorted(map(str, served)))}); start it with them"
                " (recoverlib serve --adapter NAME=PATH)"
            )
        return str(base["id"]), int(base.get("max_model_len") or 4096)

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self._max_len

    def generate(self, prompts: Prompts, sampling: SamplingConfig, adapters: Sequence[str | None],
                 keys: Sequence[int] | None = None) -> Samples:
        requests = self._requests(prompts, adapters)
        jobs = [(a, list(p), list(self.prompt_keys(keys, len(p)))) for a, p in requests.items() if len(p)]
        with ThreadPoolExecutor(self.config.concurrency * len(self.clients)) as pool:
            done = list(pool.map(lambda job: self._complete(*job, sampling), jobs))
        out: Samples = {a: [] for a in adapters}
        out.update({a: texts for (a, _, _), texts in zip(jobs, done, strict=True)})
        return out

    def _complete(self, adapter: str | None, prompts: list[str], keys: list[int], sampling: SamplingConfig):
        """One request: ``prompts`` (as token ids) for ``adapter``; its texts per prompt."""
        ids = self._tokenizer(prompts, add_special_tokens=False)["input_ids"]
        n = sampling.draws
        body = {
            "model": adapter or self.base_model,
            "prompt": ids,
            "n": n,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": 1.0 if sampling.greedy else sampling.top_p,
            "top_k": 0,
            "min_p": 0.0,
            "min_tokens": 0,
            "repetition_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "seed": sampling.request_seed(keys[0], self.adapter_index(adapter)),
            "ignore_eos": sampling.ignore_eos,
            "skip_special_tokens": True,
            "stream": False,
            "echo": False,
            "vllm_xargs": group_xargs(uuid.uuid4().hex, len(ids), n),  # start together (whole_requests)
        }
        client = self._slots.get()
        try:
            answer = client.call("POST", "/v1/completions", body)
        finally:
            self._slots.put(client)
        choices = sorted(answer["choices"], key=lambda c: c["index"])
        if len(choices) != n * len(ids):
            raise RecoverlibError(
                f"the server returned {len(choices)} completions for {len(ids)} prompts x {n}"
            )
        return [repeat_greedy([c["text"].rstrip("\ufffd") for c in choices[i * n : (i + 1) * n]], sampling)
                for i in range(len(ids))]

    def close(self) -> None:
        for client in self.clients:
            client.session.close()


def _local_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)
