"""``recoverlib serve`` (vLLM's own OpenAI-compatible server, started here on 127.0.0.1) and ``--engine
openai`` against it: the same greedy predictions as the in-process engine, seeded samples that repeat,
one-line refusals (another model, a group tag that does not fit its request), a server killed mid-run, then
resumed, writing what a run that never stopped writes, and ``recoverlib serve`` itself killed (SIGKILL,
SIGHUP) leaving no process behind."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from benchmarks.seeded_repeats import busy_cores
from recoverlib.cli import main
from recoverlib.io import read_sample_lines
from tests.executors.conftest import free_port

pytest.importorskip("vllm", reason="vLLM is not installed")
pytestmark = pytest.mark.slow  # each server takes 20-40 s to start on 2 cores

KEY = "test-key"
SERVED = "tiny-served"  # the base's name on the server (its root is the folder)


@pytest.fixture(scope="module")
def server(tiny_model, tiny_adapters, tmp_path_factory):
    from recoverlib.engines import EngineConfig
    from recoverlib.serve import ServeConfig, VllmServer

    adapters = {"a": tiny_adapters["tiny-a"], "b": tiny_adapters["tiny-b"]}
    log = tmp_path_factory.mktemp("server") / "server.log"
    serve = ServeConfig(port=free_port(), api_key=KEY, served_model_name=SERVED)
    with VllmServer(tiny_model, adapters, EngineConfig(), serve, log) as srv:
        yield srv


def _predict(capsys, model, adapters, out: Path, *extra) -> tuple[int, str]:
    argv = [
        "predict",
        "--model",
        str(model),
        *[x for n, p in adapters.items() for x in ("--adapter", f"{n}={p}")],
        "--max-new-tokens",
        "10",
        "--input",
        str(out.parent / "rows.csv"),
        "--out",
        str(out),
        "--samples-file",
        str(out.with_suffix(".jsonl")),
        "--include-base",
        *map(str, extra),
    ]
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.fixture
def work(sample_csv, tmp_path):
    pd.read_csv(sample_csv, dtype=str).to_csv(tmp_path / "rows.csv", index=False)
    return tmp_path


def _adapters(tiny_adapters):
    return {"a": tiny_adapters["tiny-a"], "b": tiny_adapters["tiny-b"]}


def test_greedy_through_the_server_equals_the_in_process_engine(
    server, tiny_model, tiny_adapters, work, capsys
):
    ad = _adapters(tiny_adapters)
    greedy = ("--samples", "1", "--temperature", "0")
    code, err = _predict(
        capsys,
        tiny_model,
        ad,
        work / "server.csv",
        "--engine",
        "openai",
        "--server-url",
        server.url,
        "--api-key",
        KEY,
        *greedy,
    )
    assert code == 0, err[-2000:]
    code, err = _predict(capsys, tiny_model, ad, work / "local.csv", "--engine", "vllm", *greedy)
    assert code == 0, err[-2000:]
    assert filecmp.cmp(work / "server.jsonl", work / "local.jsonl", shallow=False)


def test_seeded_sampling_through_the_server_repeats_on_a_busy_machine(
    server, tiny_model, tiny_adapters, work, capsys
):
    # Both cores busy, as on a CI machine: the server's API process then hands a request's prompts to the
    # engine slowly, and without the plugin's whole-requests cure 19 of 30 runs changed a sample
    # (benchmarks/results/seeded_repeats.md; this test failed 2 of 2 times with the cure off).
    ad = _adapters(tiny_adapters)
    runs = [work / f"run{i}.csv" for i in range(16)]
    with busy_cores(2):
        for out in runs:
            code, err = _predict(capsys, tiny_model, ad, out, "--engine", "openai", "--server-url",
                                 server.url, "--api-key", KEY, "--samples", "3", "--seed", "7")
            assert code == 0, err[-2000:]
    first = runs[0].with_suffix(".jsonl")
    differ = [r.name for r in runs[1:] if not filecmp.cmp(first, r.with_suffix(".jsonl"), shallow=False)]
    assert not differ, differ
    header, *lines = first.read_text().splitlines()
    assert json.loads(header)["settings"]["engine"] == "vllm server, seeded per request of 256 rows"
    assert len(lines) == 12 and '"adapter": "a"' in lines[0] and '"adapter": null' in lines[0]


def test_a_model_name_without_a_folder_here_uses_the_servers_tokenizer(
    server, tiny_model, tiny_adapters, work, capsys
):
    ad = _adapters(tiny_adapters)
    greedy = (
        "--engine",
        "openai",
        "--server-url",
        server.url,
        "--api-key",
        KEY,
        "--samples",
        "1",
        "--temperature",
        "0",
    )
    assert _predict(capsys, tiny_model, ad, work / "folder.csv", *greedy)[0] == 0
    # by name: the adapters are the server's (no folder here: no prime, no recorded template); the tokenizer
    # remote
    code, err = _predict(capsys, SERVED, {"a": "a"}, work / "remote.csv", *greedy)
    assert code == 0, err[-2000:]
    folder = read_sample_lines(work / "folder.jsonl")
    remote = read_sample_lines(work / "remote.jsonl")
    assert [_texts(x, "a") for x in remote] == [_texts(x, "a") for x in folder]
    # a name the server does not serve is no longer its only model: one line
    code, err = _predict(capsys, f"{tiny_model}-not-here", {}, work / "nowhere.csv", *greedy)
    assert code == 2 and f"serves ['{SERVED}'], not {tiny_model}-not-here" in err.strip().splitlines()[-1]


def _texts(line, adapter):
    return [s.text for s in line[2] if s.adapter == adapter]


@pytest.fixture(scope="module")
def other_tokenizer(tiny_model, tmp_path_factory):
    """The tiny model's folder with another model's tokenizer (the tiny tokenizer trained to a smaller
    vocabulary, saved by transformers)."""
    from recoverlib.engines.openai import PROBE_TEXT
    from recoverlib.tiny.model import train_tokenizer

    out = tmp_path_factory.mktemp("other") / "model"
    shutil.copytree(tiny_model, out)
    tok = train_tokenizer(512)
    tok.save_pretrained(out)
    assert tok(PROBE_TEXT)["input_ids"] != _tokenizer(tiny_model)(PROBE_TEXT)["input_ids"]
    return out


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_a_local_folder_with_another_tokenizer_is_refused(server, other_tokenizer, work, capsys):
    code, err = _predict(capsys, other_tokenizer, {}, work / "x.csv", "--engine", "openai", "--server-url",
                         server.url, "--api-key", KEY)
    last = err.strip().splitlines()[-1]
    assert code == 2 and "whose tokenizer is not" in last and "other token ids there" in last, last
    assert not (work / "x.csv").exists()


def test_a_second_server_on_a_live_servers_port_is_one_line(server, tiny_model, capsys):
    port = server.url.rsplit(":", 1)[1].removesuffix("/v1")
    start = time.monotonic()
    assert main(["serve", "--model", str(tiny_model), "--port", port]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"port {port} on 127.0.0.1 is taken" in last and time.monotonic() - start < 30, last


def test_the_server_refuses_a_group_tag_that_does_not_fit_its_request(server):
    import requests

    body = {"model": "a", "prompt": ["one", "two"], "n": 2, "max_tokens": 2,
            "vllm_xargs": {"recoverlib_group": "g", "recoverlib_group_size": 3}}
    start = time.monotonic()
    resp = requests.post(server.url + "/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                         timeout=60)
    assert resp.status_code == 400 and time.monotonic() - start < 5
    assert "recoverlib_group_size 3 does not match the request: 2 prompt(s) x n=2 = 4" in resp.text


@pytest.mark.parametrize(("extra", "message"), [
    (("--adapter", "c=c"), "does not serve adapter(s) c (it serves"),
    (("--api-key", "wrong"), "refused the API key (401 on /v1/models): give the right one with --api-key"),
])
def test_refusals_before_any_row(server, tiny_model, work, capsys, extra, message):
    argv = [
        "predict",
        "--engine",
        "openai",
        "--server-url",
        server.url,
        "--model",
        str(tiny_model),
        "--input",
        str(work / "rows.csv"),
        "--out",
        str(work / "x.csv"),
        "--samples-file",
        str(work / "x.jsonl"),
    ]
    if "--api-key" not in extra:
        argv += ["--api-key", KEY]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("recoverlib: error: ") and message in err[-1], err[-3:]
    assert not (work / "x.jsonl").exists() or not (work / "x.jsonl").read_text()


def test_an_unreachable_server_is_one_line(tiny_model, work, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    argv = [
        "predict",
        "--engine",
        "openai",
        "--server-url",
        url,
        "--retries",
        "1",
        "--model",
        str(tiny_model),
        "--input",
        str(work / "rows.csv"),
        "--out",
        str(work / "x.csv"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        f"recoverlib: error: the server at {url} does not answer /v1/models (ConnectionError"
    )


def _serve_cli(model, adapters, port: int, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "recoverlib.cli", "serve", "--model", str(model), "--port", str(port),
            *[x for n, p in adapters.items() for x in ("--adapter", f"{n}={p}")]]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(log, "ab"), text=True)  # noqa: SIM115
    line = proc.stdout.readline()  # printed once the server answers
    assert line.startswith("serving ") and f"127.0.0.1:{port}/v1" in line, (line, log.read_text()[-2000:])
    return proc


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("how", ["SIGKILL", "SIGHUP"])
def test_nothing_outlives_recoverlib_serve(how, tiny_model, tmp_path):
    """`recoverlib serve` itself killed (SIGKILL: no handler runs; SIGHUP: a closed terminal): its server's
    API process, engine core and worker are gone within seconds and the port is free."""
    port = free_port()
    serve = _serve_cli(tiny_model, {}, port, tmp_path / "server.log")
    tree = [p.pid for p in psutil.Process(serve.pid).children(recursive=True)]
    assert len(tree) >= 3, tree  # API server, engine core, worker
    start = time.monotonic()
    serve.send_signal(getattr(signal, how))
    serve.wait(60)
    alive = tree
    while alive and time.monotonic() - start < 60:
        alive = [p for p in tree if _running(p)]
        time.sleep(0.1)
    took = time.monotonic() - start
    assert not alive and took < 30, (alive, took)
    assert not _listening(port)
    print(f"{how}: the server's {len(tree)} processes gone {took:.1f} s after recoverlib serve was killed")


def test_the_server_killed_mid_run_then_resumed(tiny_model, tiny_adapters, sample_csv, tmp_path):
    ad = _adapters(tiny_adapters)
    rows = pd.concat([pd.read_csv(sample_csv, dtype=str)] * 4, ignore_index=True).head(40)
    rows["id"] = [f"row{i:03d}" for i in range(len(rows))]
    rows.to_csv(tmp_path / "rows.csv", index=False)
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "recoverlib.cli",
        "predict",
        "--engine",
        "openai",
        "--server-url",
        f"http://127.0.0.1:{port}",
        "--retries",
        "2",
        "--model",
        str(tiny_model),
        *[x for n, p in ad.items() for x in ("--adapter", f"{n}={p}")],
        "--samples",
        "3",
        "--max-new-tokens",
        "24",
        "--chunk-rows",
        "2",
        "--input",
        str(tmp_path / "rows.csv"),
    ]
    server = _serve_cli(tiny_model, ad, port, tmp_path / "server.log")
    whole = subprocess.run(
        [*argv, "--out", str(tmp_path / "whole.csv"), "--samples-file", str(tmp_path / "whole.jsonl")],
        capture_output=True,
        text=True,
    )
    assert whole.returncode == 0, whole.stderr[-2000:]
    samples = tmp_path / "cut.jsonl"
    run = subprocess.Popen([*argv, "--out", str(tmp_path / "cut.csv"), "--samples-file", str(samples)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while run.poll() is None and not (samples.is_file() and samples.read_text().count("\n") >= 4):
        time.sleep(0.05)
    group = [server.pid, *(c.pid for c in psutil.Process(server.pid).children(recursive=True))]
    for pid in group:  # the server and every process it started die at once
        os.kill(pid, signal.SIGKILL)
    err = run.communicate(timeout=120)[1]
    assert run.returncode == 2 and "Traceback" not in err, err[-2000:]
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            f"recoverlib: error: the server at http://127.0.0.1:{port} does not answer /v1/completions"
        )
    )
    kept = samples.read_text().count("\n")
    assert 4 <= kept < 40 and not (tmp_path / "cut.csv").exists()
    server = _serve_cli(tiny_model, ad, port, tmp_path / "server.log")  # back
    try:
        resumed = subprocess.run([*argv, "--out", str(tmp_path / "cut.csv"), "--samples-file", str(samples),
                                  "--resume"], capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert filecmp.cmp(samples, tmp_path / "whole.jsonl", shallow=False)
        assert filecmp.cmp(tmp_path / "cut.csv", tmp_path / "whole.csv", shallow=False)
    finally:
        children = psutil.Process(server.pid).children(recursive=True)
        server.send_signal(signal.SIGTERM)  # recoverlib serve stops the server and every process it started
        server.wait(60)
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [p.pid for p in alive]
