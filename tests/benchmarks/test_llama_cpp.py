"""The llama.cpp benchmark's tiny path: conversion, quantization and the batched loop give a table, csv and
plot (speed is not checked here)."""

import sys

import pandas as pd
import pytest


@pytest.mark.slow
def test_tiny_llama_cpp_benchmark_writes_results(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from benchmarks.llama_cpp import main
    from benchmarks.llama_cpp_batch import CONVERTER, default_src

    src = default_src()
    if src is None or not (src / CONVERTER).is_file():
        pytest.skip("LLAMA_CPP_SRC does not name llama.cpp's source (its GGUF converter)")
    argv = ["--model", "tiny", "--rows", "2", "--repeats", "1", "--quants", "q4_0", "--skip-vllm",
            "--out", str(tmp_path), "--name", "t"]
    assert main(argv) == 0
    frame = pd.read_csv(tmp_path / "t.csv")
    assert list(frame["engine"]) == ["llama.cpp bf16", "llama.cpp q4_0"]
    assert (frame["prefill_s"] > 0).all() and (frame["decode_s"] > 0).all()
    assert (frame["tok_per_s"] * frame["whole_s"]).round().eq(2 * 4 * 16).all()  # rows x n x tokens
    assert (tmp_path / "t.png").stat().st_size > 1000
    assert "Load average" in (tmp_path / "t.md").read_text()


def test_missing_llama_cpp_is_one_line(monkeypatch):
    from benchmarks.llama_cpp_batch import require_llama_cpp

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(SystemExit, match="pip install llama-cpp-python"):
        require_llama_cpp()
