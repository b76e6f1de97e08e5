"""Tensor parallel on vLLM's CPU backend, through the CLI: two ranks (one process and one core each) give the
same greedy outputs as one, for the base and for LoRA adapters served dynamically.

float32, so that the two ranks' partial sums (added by an all-reduce) cannot flip a near-tie that bf16
rounding would: in bf16 one of the tiny random model's base outputs differed between 1 and 2 ranks.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from recoverlib.io import read_samples

pytest.importorskip("vllm", reason="vLLM is not installed")


def _predict(tiny_model, tiny_adapters, sample_csv, out_dir, *extra):
    out_dir.mkdir()
    samples = out_dir / "samples.jsonl"
    adapters = [x for name, path in sorted(tiny_adapters.items()) for x in ("--adapter", f"{name}={path}")]
    cmd = [
        sys.executable,
        "-m",
        "recoverlib.cli",
        "predict",
        "--model",
        str(tiny_model),
        "--input",
        str(sample_csv),
        "--out",
        str(out_dir / "sub.csv"),
        "--samples-file",
        str(samples),
        *adapters,
        "--include-base",
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
        "--lora-mode",
        "dynamic",
        "--dtype",
        "float32",
        *extra,
    ]
    # The timeout catches vLLM processes that outlive the CLI: they hold its output pipes open.
    res = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return read_samples(samples)


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="tensor parallel 2 on CPU needs 2 cores")
def test_tensor_parallel_2_equals_1_with_dynamic_lora(tiny_model, tiny_adapters, sample_csv, tmp_path):
    one = _predict(tiny_model, tiny_adapters, sample_csv, tmp_path / "tp1")
    two = _predict(tiny_model, tiny_adapters, sample_csv, tmp_path / "tp2", "--tensor-parallel-size", "2",
                   "--multiprocess")
    assert one == two
    adapters = {s.adapter for samples in one.values() for s in samples}
    assert adapters == {None, *tiny_adapters} or adapters == {"base", *tiny_adapters}, adapters
    assert any(s.text.strip() for samples in one.values() for s in samples)
