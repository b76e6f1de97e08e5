"""The OpenAI client's edges against a stand-in HTTP server (the real server: tests/engines/test_openai.py):
what is retried (and as a new request), what is not, server errors that stay errors, keys and URLs."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from recoverlib.engines.openai import OpenAIConfig
from recoverlib.engines.openai_client import (
    RemoteTokenizer,
    ServerClient,
    ServerRefused,
    api_key_from,
    server_root,
)
from recoverlib.errors import RecoverlibError


class StandIn:
    """An HTTP server answering each POST with the next of ``answers`` (status, body, seconds to wait)."""

    def __init__(self, answers):
        self.answers, self.bodies = list(answers), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                outer.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                status, body, wait = outer.answers.pop(0)
                time.sleep(wait)
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timed out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in():
    made = []

    def make(*answers):
        made.append(StandIn(answers))
        return made[-1]

    yield make
    for server in made:
        server.close()


def _fresh_body():
    return {"vllm_xargs": {"recoverlib_group": f"g{time.monotonic_ns()}"}}


def test_a_retry_is_a_new_request_with_a_fresh_group(stand_in):
    server = stand_in((503, {"error": "busy"}, 0), (200, {"ok": 1}, 0))
    client = ServerClient(server.url, retries=2, backoff_s=0.01)
    assert client.call("POST", "/v1/completions", _fresh_body) == {"ok": 1}
    groups = [b["vllm_xargs"]["recoverlib_group"] for b in server.bodies]
    assert len(groups) == 2 and groups[0] != groups[1]


def test_a_request_that_timed_out_is_not_sent_again(stand_in):
    server = stand_in((200, {"ok": 1}, 3), (200, {"ok": 2}, 0))
    client = ServerClient(server.url, retries=3, backoff_s=0.01)
    start = time.monotonic()
    said = r"did not finish /v1/completions for 2 prompt\(s\) within 1 s \(not sent again.*raise --timeout-s"
    with pytest.raises(RecoverlibError, match=said):
        client.call("POST", "/v1/completions", _fresh_body, timeout_s=1, what=" for 2 prompt(s)")
    assert time.monotonic() - start < 2.5 and len(server.bodies) == 1


def test_a_refusal_is_not_retried_and_keeps_its_status(stand_in):
    server = stand_in((400, {"error": {"message": "bad tag"}}, 0))
    with pytest.raises(ServerRefused, match=r"refused /v1/completions \(400: bad tag\)") as err:
        ServerClient(server.url, retries=3).call("POST", "/v1/completions", {})
    assert err.value.status == 400 and len(server.bodies) == 1


def test_an_answer_that_is_not_json_is_one_line(stand_in):
    server = stand_in((200, ["not", "an", "object"], 0))
    with pytest.raises(RecoverlibError, match="something other than a JSON object"):
        ServerClient(server.url).call("POST", "/x", {})


@pytest.mark.parametrize(("status", "message", "means_none"), [
    (400, "As of transformers v4.44, default chat template is no longer allowed", True),
    (400, "model not found", False),
    (401, "Unauthorized", False),
    (500, "engine dead", False),
])
def test_the_chat_template_probe_turns_only_the_servers_no_into_none(stand_in, status, message, means_none):
    server = stand_in(*[(status, {"error": {"message": message}}, 0)] * 2)
    tokenizer = RemoteTokenizer(ServerClient(server.url, retries=1, backoff_s=0.01), "m")
    if means_none:
        assert tokenizer.chat_template is None
    else:
        with pytest.raises(RecoverlibError, match=f"{status}|does not answer"):
            tokenizer.chat_template  # noqa: B018 (a property that asks the server)


def test_a_server_that_is_down_is_an_error_for_the_chat_template_probe():
    tokenizer = RemoteTokenizer(ServerClient("http://127.0.0.1:1", retries=0), "m")
    with pytest.raises(RecoverlibError, match="does not answer /tokenize"):
        tokenizer.chat_template  # noqa: B018


def test_the_api_key_comes_from_the_option_else_the_environment():
    assert api_key_from("given", environ={"RECOVERLIB_API_KEY": "env"}) == "given"
    assert api_key_from(None, environ={"RECOVERLIB_API_KEY": "env"}) == "env"
    assert api_key_from(None, environ={"VLLM_API_KEY": "v"}) is None  # a client reads ours only
    assert api_key_from(None, ("RECOVERLIB_API_KEY", "VLLM_API_KEY"), {"VLLM_API_KEY": "v"}) == "v"


@pytest.mark.parametrize(("url", "root"), [
    ("http://h:8000", "http://h:8000"), ("http://h:8000/v1/", "http://h:8000"), ("https://h/p/v1", "https://h/p"),
])
def test_server_urls(url, root):
    assert server_root(url) == root


@pytest.mark.parametrize("url", ["not a url", "h:8000", "ftp://h", "http://", "http://h:99999", "http://h:x",
                                 "http://h:8000/v1?a=1"])
def test_what_is_not_a_server_url_is_one_line(url):
    with pytest.raises(RecoverlibError, match="--server-url"):
        OpenAIConfig(server_url=f"http://ok:1,{url}")


def test_a_requests_timeout_grows_with_its_tokens():
    config = OpenAIConfig(timeout_s=60, min_tokens_per_s=10)
    assert config.request_timeout(0) == 60 and config.request_timeout(256 * 4 * 32) == 60 + 3277
