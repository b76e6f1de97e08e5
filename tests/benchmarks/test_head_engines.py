"""The head-engines benchmark: each engine in its own process scores the same inputs, and the table says they
agree (a small run on the tiny model)."""

from __future__ import annotations

import pandas as pd
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed")


@pytest.mark.slow
def test_head_engines_writes_an_agreeing_table(tmp_path):
    from benchmarks.head_engines import main

    assert main(["--model", "tiny", "--rows", "2", "--candidates", "2", "--repeats", "1",
                 "--out", str(tmp_path)]) == 0
    frame = pd.read_csv(tmp_path / "head_engines_tiny.csv")
    assert list(frame["engine"]) == ["hf", "vllm"] and (frame["inputs per set"] == 4).all()
    vllm = frame.set_index("engine").loc["vllm"]
    assert float(vllm["max |score - hf|"]) < 1e-4 < float(vllm["score spread (std)"])
    assert (frame["inputs/s"] > 0).all() and (frame["resident MB added"] > 0).all()
    assert (tmp_path / "head_engines_tiny.png").stat().st_size > 1000
