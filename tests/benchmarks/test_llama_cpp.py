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


@pytest.mark.slow
def test_packed_prompts_and_shared_kv_give_transformers_logits(tmp_path):
    """The loop's batch layout (prompts packed in one batch, a prompt's cells copied to its second sequence,
    every sequence one token in the next batch) gives the logits transformers computes prompt by prompt."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.llama_cpp import prompt_ids
    from benchmarks.llama_cpp_batch import CONVERTER, BatchedLlama, convert, default_src
    from benchmarks.serving import tiny_model

    src = default_src()
    if src is None or not (src / CONVERTER).is_file():
        pytest.skip("LLAMA_CPP_SRC does not name llama.cpp's source (its GGUF converter)")
    model = tiny_model(tmp_path / "tiny", adapters=1) / "model"
    tok = AutoTokenizer.from_pretrained(model)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    _, ids = prompt_ids(tok, 3, seed=5)
    eng = BatchedLlama(convert(model, tmp_path / "bf16.gguf", src, tmp_path / "log"), 2, repack=True)
    lc, vocab = eng.lc, hf.config.vocab_size
    ctx = eng._context(sum(map(len, ids)) + 64, 6)
    batch = lc.llama_batch_init(2048, 0, 1)

    def logits(i):
        return np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, i), shape=(vocab,)).copy()

    def want(tokens):
        with torch.no_grad():
            return hf(torch.tensor([tokens])).logits[0, -1].numpy()

    fill, last = 0, []
    for p, x in enumerate(ids):
        for pos, t in enumerate(x):
            eng._put(batch, fill, t, pos, 2 * p, pos == len(x) - 1)
            fill += 1
        last.append(fill - 1)
    eng._run(ctx, batch, fill)
    nxt = []
    for p in range(3):
        lc.llama_memory_seq_cp(lc.llama_get_memory(ctx), 2 * p, 2 * p + 1, -1, -1)
        ref = want(ids[p])
        assert np.corrcoef(logits(last[p]), ref)[0, 1] > 0.99
        nxt.append(int(ref.argmax()))
    for s in range(6):
        eng._put(batch, s, nxt[s // 2], len(ids[s // 2]), s, True)
    eng._run(ctx, batch, 6)
    for s in range(6):
        ref = want(ids[s // 2] + [nxt[s // 2]])
        assert np.corrcoef(logits(s), ref)[0, 1] > 0.99 and logits(s).argmax() == ref.argmax()
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    eng.close()
