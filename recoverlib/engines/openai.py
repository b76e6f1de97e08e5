"""OpenAIEngine: the pipeline against any OpenAI-compatible server that serves the base and the adapters by
name.

vLLM's server (``recoverlib serve``) is the one it is made for: ``/v1/completions`` with ``model`` = the
adapter's name (the base's for base requests), the prompts as token ids, and every sampling field sent
explicitly (a field left out would take the server's defaults): ``n``, ``seed``, ``temperature``, ``top_p``
and the rest as the in-process engine uses them. Before any row, ``/v1/models`` must list the model and every
adapter asked for, and a model folder given here must tokenize as the server does (one probe text through
``/tokenize``): a server of another model is one line, never token ids of one model sent to another. The API
key is ``--api-key`` or ``RECOVERLIB_API_KEY``. A request's timeout grows with the tokens it asks for, and a
request that timed out is not sent again (see :mod:`~recoverlib.engines.openai_client`).

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
import math
import queue
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from recoverlib.adapters import AdapterInfo, read_adapter
from recoverlib.engines.base import Engine, Prompts, Samples, SamplingConfig, repeat_greedy
from recoverlib.engines.openai_client import RemoteTokenizer, ServerClient, api_key_from, server_root
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
    api_key: str | None = setting(None, help="openai: the server's API key (default: $RECOVERLIB_API_KEY)")
    concurrency: int = setting(
        1,
        help="openai: requests in flight per server (1 repeats seeded sampling byte for"
        " byte; more lets a server batch them by arrival time)",
    )
    retries: int = setting(
        5, help="openai: retries of a request on a connection error, 429 or 5xx (with backoff)"
    )
    timeout_s: float = setting(
        600.0, help="openai: seconds a request may take, plus one second for every --min-tokens-per-s"
        " tokens it asks for (not sent again once it timed out)"
    )
    min_tokens_per_s: float = setting(
        10.0, help="openai: the slowest generation a request's timeout allows for (tokens per second)"
    )
    backoff_s: float = setting(1.0, cli=False, help="first retry's wait, doubled at each retry")

    def __post_init__(self):
        if self.concurrency < 1 or self.retries < 0 or not (self.timeout_s > 0 and self.min_tokens_per_s > 0):
            raise RecoverlibError(
                "openai: concurrency must be >= 1, retries >= 0, the timeout and --min-tokens-per-s > 0"
            )
        if self.server_url is not None:
            for url in self.server_url.split(","):
                if url.strip():
                    server_root(url)  # "not a url" is one line here, before anything else

    def request_timeout(self, tokens: int) -> float:
        """Seconds a request asking for ``tokens`` generated tokens may take (pure)."""
        return self.timeout_s + math.ceil(tokens / self.min_tokens_per_s)


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
        key = api_key_from(c.api_key)
        self.clients = [ServerClient(u, key, c.retries, c.timeout_s, c.backoff_s) for u in urls]
        self.adapters = adapter_infos(adapters or {})
        self.model = model
        folder = Path(model)
        here = (folder / "config.json").is_file()
        bases = [self._served_base(client, str(model), here) for client in self.clients]  # before any load
        served = {(str(base["id"]), int(base.get("max_model_len") or 4096)) for base, _ in bases}
        if len(served) > 1:
            raise RecoverlibError(
                f"the servers {', '.join(urls)} serve different models or contexts: {sorted(served)}"
            )
        self.base_model, self._max_len = served.pop()
        local = _local_tokenizer(folder) if here else None
        for client, (base, named) in zip(self.clients, bases, strict=True):
            if local is not None:
                check_same_tokenizer(client, self.base_model, local, str(model))
                if not named:  # another name for the same model (a copy of the folder elsewhere)
                    log.warning("the server at %s serves %s under the name %s (its tokenizer is %s's)",
                                client.root, base.get("root"), base["id"], model)
        # a free slot per (server, request in flight): each request takes one and gives it back
        self._slots: queue.Queue = queue.Queue()
        for _ in range(c.concurrency):
            for client in self.clients:
                self._slots.put(client)
        self._tokenizer = local or RemoteTokenizer(self.clients[0], self.base_model)
        if c.concurrency > 1:
            log.warning(
                "openai: %d requests in flight share the server's batches by arrival time, so seeded samples"
                " may differ from run to run (--concurrency 1 repeats them)",
                c.concurrency,
            )

    def _served_base(self, client: ServerClient, model: str, folder_here: bool) -> tuple[dict, bool]:
        """The server's card of the base and whether it was found by name: ``model`` by name, else the only
        base when ``model`` is a folder here (its tokenizer is checked next); every adapter asked for must be
        listed (else one line)."""
        cards = client.models()
        bases = [c for c in cards if not c.get("parent")]
        named = [c for c in bases if model in (c.get("id"), c.get("root"))] or \
                [c for c in bases if Path(str(c.get("root", ""))).resolve() == Path(model).resolve()]
        base = named[0] if named else (bases[0] if len(bases) == 1 and folder_here else None)
        if base is None:
            raise RecoverlibError(
                f"the server at {client.root} serves {[c.get('id') for c in bases]}, not {model}: give"
                " --model the served name, or serve that model there"
            )
        served = {c.get("id") for c in cards}
        missing = sorted(set(self.adapters) - served)
        if missing:
            raise RecoverlibError(
                f"the server at {client.root} does not serve adapter(s) {', '.join(missing)}"
                f" (it serves {', '.join(sorted(map(str, served)))}); start it with them"
                " (recoverlib serve --adapter NAME=PATH)"
            )
        return base, bool(named)

    @classmethod
    def samples_kind(cls, config, sampling: SamplingConfig, chunk_rows: int) -> str:
        """Greedy texts are the in-process vLLM engine's; seeded ones come per request (a chunk's rows)."""
        return "vllm" if sampling.greedy else f"vllm server, seeded per request of {chunk_rows} rows"

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
            "echo": False,  # + vllm_xargs per attempt: its prompts start together (whole_requests)
        }
        tokens = len(ids) * n * sampling.max_new_tokens
        client = self._slots.get()
        try:
            # a fresh group name for every attempt: a retry is a new request to the server's scheduler
            answer = client.call(
                "POST", "/v1/completions",
                lambda: {**body, "vllm_xargs": group_xargs(uuid.uuid4().hex, len(ids), n)},
                timeout_s=self.config.request_timeout(tokens),
                what=f" for {len(ids)} prompt(s) x {n} sample(s) of up to {sampling.max_new_tokens} tokens",
            )
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


# Words, digits, accents, punctuation and a newline: two tokenizers that agree on it are taken for the same.
PROBE_TEXT = "Rewrite the text as a pirate, 1,234 times: «Ünïcödé» — ok?\n  Done."


def check_same_tokenizer(client: ServerClient, served: str, local, model: str) -> None:
    """The server's tokenizer of ``served`` must give :data:`PROBE_TEXT` the ids ``local`` gives it (one line
    if not: prompts tokenized here would be another model's ids there)."""
    theirs = client.call("POST", "/tokenize", {"model": served, "prompt": PROBE_TEXT,
                                                "add_special_tokens": True}, timeout_s=60).get("tokens")
    ours = list(local(PROBE_TEXT, add_special_tokens=True)["input_ids"])
    if theirs != ours:
        raise RecoverlibError(
            f"the server at {client.root} serves {served}, whose tokenizer is not {model}'s (a probe text"
            " gets other token ids there): serve that model there, or give --model the served name"
        )


def _local_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)
