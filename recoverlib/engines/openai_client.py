"""HTTP to an OpenAI-compatible server (vLLM's): retries with backoff, one-line errors, and its tokenizer
endpoints.

A request is retried on a connection error, a timeout, 429 and 5xx, with exponential backoff; what is left
after the retries, or any other refusal (401: a wrong API key, 404: a model the server does not serve, 400),
is one line. :class:`RemoteTokenizer` gives the pipeline what it uses of a tokenizer through vLLM's
``/tokenize`` and ``/detokenize``, for a model that is not a folder here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import cached_property

from recoverlib.errors import RecoverlibError

log = logging.getLogger("recoverlib")

RETRY_STATUS = {429, 500, 502, 503, 504}


class ServerClient:
    """Requests to ``url`` (the server's base, with or without ``/v1``), with ``api_key`` if given."""

    def __init__(self, url: str, api_key: str | None = None, retries: int = 5, timeout_s: float = 600.0,
                 backoff_s: float = 1.0):
        import requests

        self.root = url.rstrip("/").removesuffix("/v1")
        self.retries, self.timeout_s, self.backoff_s = retries, timeout_s, backoff_s
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def call(self, method: str, path: str, body: dict | None = None, timeout_s: float | None = None) -> dict:
        """The JSON answer of ``method path``; retried (see the module docstring), else one line."""
        import requests

        for attempt in range(self.retries + 1):
            try:
                resp = self.session.request(
                    method, self.root + path, json=body, timeout=timeout_s or self.timeout_s
                )
            except (requests.ConnectionError, requests.Timeout) as err:
                problem = f"{type(err).__name__}"
            else:
                if resp.status_code < 400:
                    return resp.json()
                if resp.status_code not in RETRY_STATUS:
                    raise RecoverlibError(self._refusal(path, resp)) from None
                problem = f"HTTP {resp.status_code}"
            if attempt < self.retries:
                wait = self.backoff_s * 2**attempt
                log.warning(
                    "%s%s: %s; retrying in %.0f s (%d of %d)",
                    self.root,
                    path,
                    problem,
                    wait,
                    attempt + 1,
                    self.retries,
                )
                time.sleep(wait)
        raise RecoverlibError(
            f"the server at {self.root} does not answer {path} ({problem}, after {self.retries}"
            " retries): finished rows are in the samples file; rerun with --resume once it is back"
        )

    def _refusal(self, path: str, resp) -> str:
        try:
            detail = resp.json()
            detail = (
                (detail.get("error") or {}).get("message")
                if isinstance(detail.get("error"), dict)
                else detail.get("error") or detail.get("message") or detail
            )
        except ValueError:
            detail = resp.text[:200]
        if resp.status_code == 401:
            return (f"the server at {self.root} refused the API key (401 on {path}): give the right one with"
                    " --api-key")
        return f"the server at {self.root} refused {path} ({resp.status_code}: {str(detail)[:300]})"

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
        """Truthy when the server's tokenizer has a chat template (it renders a chat then)."""
        try:
            self._ids({"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": True})
        except RecoverlibError:
            return None
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
