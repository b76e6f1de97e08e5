"""HTTP to an OpenAI-compatible server (vLLM's): safe retries with backoff, one-line errors, and its
tokenizer endpoints.

A request is retried, with exponential backoff, only where sending it again is safe and may succeed: a
connection error (the server was down or restarting: the request was lost with it), 429 and 5xx (the server
said so). The body is built again for every attempt, so a retry is a new request (a fresh group name for
recoverlib's whole-requests cure). A request that timed out is not sent again (the same request would take as
long again): its timeout is sized from the request by the caller. What is left after the retries, or any
other refusal (401: a wrong API key, 404: a model the server does not serve, 400), is one line
(:class:`ServerRefused` keeps the status). :class:`RemoteTokenizer` gives the pipeline what it uses of a
tokenizer through vLLM's ``/tokenize`` and ``/detokenize``, for a model that is not a folder here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from urllib.parse import urlsplit

from recoverlib.errors import RecoverlibError

log = logging.getLogger("recoverlib")

RETRY_STATUS = {429, 500, 502, 503, 504}
# Where a command finds an API key it was not given: clients read RECOVERLIB_API_KEY, a server vLLM's too.
CLIENT_KEY_ENV = ("RECOVERLIB_API_KEY",)
SERVER_KEY_ENV = ("RECOVERLIB_API_KEY", "VLLM_API_KEY")
RESUME_HINT = "finished rows are in the samples file; rerun with --resume"


def import_requests():
    """requests (the client's and the server's HTTP), or a one-line error naming the extra to install."""
    try:
        import requests
    except ImportError as err:
        raise RecoverlibError(f"talking to a server needs requests ({err}): pip install 'recoverlib[openai]'"
                              ) from None
    return requests


def api_key_from(given: str | None, names: Sequence[str] = CLIENT_KEY_ENV,
                 environ: Mapping[str, str] | None = None) -> str | None:
    """``given``, else the first of the environment variables ``names`` that is set (None: no key)."""
    environ = os.environ if environ is None else environ
    return given or next((environ[n] for n in names if environ.get(n)), None)


def server_root(url: str) -> str:
    """``http(s)://HOST[:PORT][/prefix]`` of a server URL (``/v1`` dropped); anything else is one line."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port  # a port that is not a number raises here
    except ValueError as err:
        raise RecoverlibError(f"--server-url {url!r}: {err}; give http://HOST:PORT") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise RecoverlibError(f"--server-url {url!r} is not a server URL: give http://HOST:PORT")
    if port == 0:
        raise RecoverlibError(f"--server-url {url!r}: port 0; give http://HOST:PORT")
    return text.rstrip("/").removesuffix("/v1").rstrip("/")


class ServerRefused(RecoverlibError):
    """The server answered with an error status a retry would not change; ``status`` and ``detail`` kept."""

    def __init__(self, message: str, status: int, detail: str):
        super().__init__(message)
        self.status, self.detail = status, detail


class ServerClient:
    """Requests to ``url`` (the server's base, with or without ``/v1``), with ``api_key`` if given."""

    def __init__(self, url: str, api_key: str | None = None, retries: int = 5, timeout_s: float = 600.0,
                 backoff_s: float = 1.0):
        requests = import_requests()
        self.root = server_root(url)
        self.retries, self.timeout_s, self.backoff_s = retries, timeout_s, backoff_s
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def call(self, method: str, path: str, body: dict | Callable[[], dict] | None = None,
             timeout_s: float | None = None, what: str = "") -> dict:
        """The JSON answer of ``method path``; retried where safe (see the module docstring), else one line.

        ``body``: the JSON body, or a function that builds it (called again for every attempt); ``what``:
        the request in words, for the line a timeout ends in."""
        requests = import_requests()
        timeout = timeout_s or self.timeout_s
        for attempt in range(self.retries + 1):
            try:
                resp = self.session.request(method, self.root + path, timeout=timeout,
                                            json=body() if callable(body) else body)
            except (requests.ConnectionError, requests.ConnectTimeout) as err:
                problem = type(err).__name__
            except requests.Timeout:
                raise RecoverlibError(
                    f"the server at {self.root} did not finish {path}{what} within {timeout:.0f} s (not sent"
                    f" again: it would take as long); raise --timeout-s or lower --chunk-rows; {RESUME_HINT}"
                ) from None
            except requests.RequestException as err:
                raise RecoverlibError(f"{self.root}{path}: {type(err).__name__}: {err}") from None
            else:
                if resp.status_code < 400:
                    return self._json(path, resp)
                if resp.status_code not in RETRY_STATUS:
                    raise self._refusal(path, resp) from None
                problem = f"HTTP {resp.status_code}"
            if attempt < self.retries:
                wait = self.backoff_s * 2**attempt
                log.warning("%s%s: %s; retrying in %.0f s (%d of %d)", self.root, path, problem, wait,
                            attempt + 1, self.retries)
                time.sleep(wait)
        hint = f": {RESUME_HINT} once it is back" if path.endswith("/completions") else ""
        raise RecoverlibError(
            f"the server at {self.root} does not answer {path} ({problem}, after {self.retries}"
            f" retries){hint}"
        )

    def _json(self, path: str, resp) -> dict:
        try:
            answer = resp.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise RecoverlibError(
                f"the server at {self.root} answered {path} with something other than a JSON object"
                f" ({resp.text[:100]!r}): is it an OpenAI-compatible server?"
            )
        return answer

    def _refusal(self, path: str, resp) -> ServerRefused:
        try:
            detail = resp.json()
            detail = (
                (detail.get("error") or {}).get("message")
                if isinstance(detail.get("error"), dict)
                else detail.get("error") or detail.get("message") or detail
            )
        except (ValueError, AttributeError):
            detail = resp.text[:200]
        detail = str(detail)
        if resp.status_code == 401:
            return ServerRefused(f"the server at {self.root} refused the API key (401 on {path}): give the"
                                 " right one with --api-key or RECOVERLIB_API_KEY", 401, detail)
        return ServerRefused(f"the server at {self.root} refused {path} ({resp.status_code}:"
                             f" {detail[:300]})", resp.status_code, detail)

    def models(self) -> list[dict]:
        """``/v1/models``: the base model(s) and the adapters the server serves."""
        return self.call("GET", "/v1/models", timeout_s=30).get("data", [])


class RemoteTokenizer:
    """The part of a tokenizer the pipeline uses, answered by the server's ``/tokenize`` and
    ``/detokenize``."""

    def __init__(self, client: ServerClient, model: str):
        self.client, self.model = client, model

    def _ids(self, body: dict) -> list[int]:
        return self.client.call("POST", "/tokenize", {"model": self.model, **body}, timeout_s=60)["tokens"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.client.call(
            "POST", "/detokenize", {"model": self.model, "tokens": list(ids)}, timeout_s=60
        )["prompt"]

    def __call__(self, texts, add_special_tokens: bool = True, **_):
        batch = [texts] if isinstance(texts, str) else list(texts)
        ids = [self._ids({"prompt": t, "add_special_tokens": add_special_tokens}) for t in batch]
        return {"input_ids": ids[0] if isinstance(texts, str) else ids}

    @cached_property
    def chat_template(self) -> str | None:
        """Truthy when the server's tokenizer has a chat template (it renders a chat then). Only the server's
        own answer that it has none (400, naming the chat template) means none: any other failure is one
        line, never a silent switch to plain prompts."""
        try:
            self._ids({"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": True})
        except ServerRefused as err:
            if err.status == 400 and "chat template" in err.detail.lower():
                return None
            raise
        return "(the server's)"

    def apply_chat_template(self, messages, tokenize: bool = False, add_generation_prompt: bool = True, **_):
        ids = self._ids({"messages": messages, "add_generation_prompt": add_generation_prompt})
        return ids if tokenize else self.decode(ids)

    @cached_property
    def bos_token(self) -> str | None:
        """The text of the BOS token the tokenizer adds (None if it adds none)."""
        with_special, plain = (
            self._ids({"prompt": "x", "add_special_tokens": True}),
            self._ids({"prompt": "x", "add_special_tokens": False}),
        )
        extra = with_special[: len(with_special) - len(plain)]
        return self.decode(extra) or None if extra else None

    eos_token = None  # the server's texts come with special tokens skipped: nothing to cut at
