"""The serving benchmark's --quick mode produces its table, csv and plot (speed is not checked here)."""

import pandas as pd
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed")


@pytest.mark.slow
def test_quick_serving_benchmark_writes_results(tmp_path):
    from benchmarks.serving import main

    argv = ["--quick", "--model", "random", "--out", str(tmp_path), "--cache", str(tmp_path / "tiny")]
    assert main(argv) == 0
    frame = pd.read_csv(tmp_path / "serving_quick.csv")
    assert set(frame["engine"]) == {
        "vllm base only",
        "vllm dynamic",
        "vllm merged",
        "hf (transformers + PEFT)",
    }
    assert (frame["tok_per_s"] > 0).all() and frame["x_hf"].notna().all()
    assert (tmp_path / "serving_quick.png").stat().st_size > 1000
    md = (tmp_path / "serving_quick.md").read_text()
    assert "Machine: cpu" in md and "Command: .venv/bin/python -m benchmarks.serving --quick" in md
    other = pd.read_csv(tmp_path / "serving_quick_other.csv")
    assert "in-process" in set(other["case"])
