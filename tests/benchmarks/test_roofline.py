"""The roofline benchmark on the tiny model, at the smallest job: its tables, runs and plot (speed is not
checked here; the roofline arithmetic is in test_job_cost.py)."""

import pandas as pd
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed")


@pytest.mark.slow
def test_tiny_roofline_writes_results(tmp_path):
    from benchmarks.roofline import main

    argv = ["--model", "tiny", "--rows", "2", "--samples", "2", "--tokens", "3", "--repeats", "2",
            "--prompt-tokens", "40", "60", "--out", str(tmp_path)]
    assert main(argv) == 0
    frame = pd.read_csv(tmp_path / "roofline_tiny.csv")
    assert {"vllm-defaults", "recoverlib", "roofline"} <= set(frame["variant"])
    measured = frame[frame["variant"] != "roofline"]
    assert (measured["prefill_s"] > 0).all() and (measured["whole_s"] > measured["prefill_s"]).all()
    assert (measured["whole_of_roofline"] > 0).all()
    runs = pd.read_csv(tmp_path / "roofline_tiny_runs.csv")
    assert runs.groupby("repeat")["prompt_tokens"].nunique().max() == 1  # the same prompts for every engine
    ceilings = pd.read_csv(tmp_path / "roofline_tiny_ceilings.csv")
    assert (ceilings.loc[ceilings["unit"] == "GB/s", "value"] > 0).all()
    assert (tmp_path / "roofline_tiny.png").stat().st_size > 1000
    assert "Load average" in (tmp_path / "roofline_tiny.md").read_text()
