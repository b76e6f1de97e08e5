"""The runtime vLLM's CPU build asks for: tcmalloc and libiomp5 preloaded by the commands that start vLLM."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from recoverlib.runtime import (
    PRELOAD_ENV,
    TCMALLOC_HINT,
    HeldEnviron,
    environ,
    find_iomp,
    find_tcmalloc,
    kept_environ,
    preload_plan,
)

TC, IOMP = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/venv/lib/libiomp5.so"


def test_what_is_added_to_ld_preload():
    assert preload_plan({}, TC, IOMP) == (f"{TC}:{IOMP}", None)
    assert preload_plan({"LD_PRELOAD": "/x/libfoo.so"}, TC, IOMP) == (f"{TC}:{IOMP}:/x/libfoo.so", None)
    assert preload_plan({"LD_PRELOAD": f"{TC} {IOMP}"}, TC, IOMP) == (None, None)  # already there
    # another copy
    assert preload_plan({"LD_PRELOAD": "/opt/libtcmalloc_minimal.so.4"}, TC, None) == (None, None)
    assert preload_plan({}, None, IOMP) == (IOMP, TCMALLOC_HINT)  # the hint names what to install
    assert preload_plan({PRELOAD_ENV: "0"}, TC, IOMP) == (None, None)  # turned off
    assert preload_plan({PRELOAD_ENV: "done"}, TC, IOMP) == (None, None)  # relaunched already: no loop


def test_the_predict_command_runs_vllm_with_them(tiny_model, sample_csv, tmp_path):
    pytest.importorskip("vllm")
    # -v: vLLM's own warnings shown (its start-up check names a missing tcmalloc or libiomp)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "recoverlib.cli",
            "-v",
            "predict",
            "--engine",
            "vllm",
            "--model",
            str(tiny_model),
            "--input",
            str(sample_csv),
            "--out",
            str(tmp_path / "sub.csv"),
            "--samples",
            "1",
            "--max-new-tokens",
            "4",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "RECOVERLIB_", "LD_PRELOAD"))}
    # vLLM's info logs are there: its warnings would be too
    assert "Starting to load model" in res.stderr, f"environment {env}; stderr: {res.stderr[:1500]}"
    if find_tcmalloc():
        assert "libtcmalloc is not found in LD_PRELOAD" not in res.stderr  # vLLM's own start-up check
    else:
        assert TCMALLOC_HINT in res.stderr
    if find_iomp():
        assert "libiomp is not found in LD_PRELOAD" not in res.stderr


def test_one_openmp_runtime_only():
    gomp = "/venv/lib/python3.11/site-packages/torch/lib/libgomp.so.1"  # what vLLM puts in LD_PRELOAD itself
    assert preload_plan({"LD_PRELOAD": gomp}, TC, IOMP) == (f"{TC}:{gomp}", None)
    assert preload_plan({"LD_PRELOAD": "/x/libomp.so"}, None, IOMP)[0] is None


def test_the_environment_vllm_writes_goes_with_the_last_engine(monkeypatch):
    held = HeldEnviron()
    monkeypatch.setenv("KEEP", "1")
    monkeypatch.setenv("KMP_X", "user")
    absent(monkeypatch, "LD_PRELOAD", "LATER")
    a, b = Holder(), Holder()
    with held.building(a):
        os.environ["LD_PRELOAD"] = "libgomp.so.1"  # as vLLM does while it builds an engine
        del os.environ["KMP_X"]
    with held.building(b):
        os.environ["KEEP"] = "vllm"
    os.environ["LATER"] = "set after the builds"  # e.g. a command's own setting: not the engines' to undo
    held.release(a)
    assert os.environ["LD_PRELOAD"] == "libgomp.so.1"  # b still runs
    held.release(b)
    assert "LD_PRELOAD" not in os.environ
    assert (os.environ["KEEP"], os.environ["KMP_X"]) == ("1", "user")
    assert os.environ["LATER"] == "set after the builds"


def test_a_variable_changed_since_a_build_is_left_alone(monkeypatch):
    held = HeldEnviron()
    absent(monkeypatch, "LD_PRELOAD")
    a = Holder()
    with held.building(a):
        os.environ["LD_PRELOAD"] = "libgomp.so.1"
    os.environ["LD_PRELOAD"] = "libtcmalloc.so"  # someone else's since
    held.release(a)
    assert os.environ["LD_PRELOAD"] == "libtcmalloc.so"


def test_defaults_for_a_block_and_names_an_import_writes_are_undone(monkeypatch):
    absent(monkeypatch, "A_DEFAULT", "WRITTEN_ON_IMPORT")
    monkeypatch.setenv("USERS", "mine")
    with environ(A_DEFAULT="1", USERS="ours"):
        assert (os.environ["A_DEFAULT"], os.environ["USERS"]) == ("1", "mine")  # the user's value stays
    assert "A_DEFAULT" not in os.environ and os.environ["USERS"] == "mine"
    with kept_environ("WRITTEN_ON_IMPORT", "USERS"):
        os.environ["WRITTEN_ON_IMPORT"] = "x"  # as TRL's import writes VLLM_LOGGING_LEVEL
        os.environ["USERS"] = "changed by the import"
    assert "WRITTEN_ON_IMPORT" not in os.environ and os.environ["USERS"] == "mine"


def test_a_command_leaves_the_environment_as_it_found_it(monkeypatch, capsys):
    from recoverlib.cli import main

    absent(monkeypatch, "VLLM_LOGGING_LEVEL", "VLLM_LOGGING_STREAM", "HF_DATASETS_DISABLE_PROGRESS_BARS")
    before = dict(os.environ)
    assert main(["predict", "--model", "/nonexistent", "--input", "x.csv", "--out", "y.csv"]) == 2
    assert dict(os.environ) == before


def absent(monkeypatch, *names):
    """``names`` unset for the test and put back after it, however the test sets them."""
    for name in names:
        monkeypatch.setenv(name, "recorded")  # monkeypatch restores only what it saw first
        monkeypatch.delenv(name)


class Holder:
    """A stand-in engine (weak references need a class instance)."""
