"""The ensemble-quality benchmark's --quick mode writes a well-formed table, plot, samples and combination
files (quality is not checked: without a cached full model it trains a tiny one for a minute)."""

import json

import pandas as pd
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed")


@pytest.mark.slow
def test_quick_ensemble_quality_writes_results(tmp_path):
    from benchmarks.ensemble_quality import main

    assert (
        main(["--quick", "--levels", "1.0", "--out", str(tmp_path), "--cache", str(tmp_path / "cache")]) == 0
    )
    frame = pd.read_csv(tmp_path / "ensemble_quality_quick.csv")
    assert set(frame["split"]) == {"validation", "test"} and set(frame["level"]) == {1.0}
    names = set(frame["strategy"])
    for name in (
        "constant prompt",
        "base greedy",
        "tiny-a greedy",
        "tiny-b greedy",
        "tiny-a x2 sampled, concat",
        "all adapters greedy, concat",
        "all adapters x2 sampled, concat + constant",
    ):
        assert name in names
    assert set(frame["embedder"]) == {"minilm", "minilm@t5like"}  # both geometries score the same samples
    assert (frame[frame["strategy"].str.endswith("(tuned)")].groupby("embedder").size() == 1).all()
    assert frame[["score", "low", "high", "vs_greedy", "vs_low", "vs_high"]].notna().all().all()
    assert ((frame.low <= frame.score + 1e-9) & (frame.score <= frame.high + 1e-9)).all()
    base = frame[(frame.strategy == "tiny-a greedy")].iloc[0]
    assert base.vs_greedy == 0 and base.tokens_per_row > 0
    assert (frame.loc[frame.strategy == "constant prompt", "tokens_per_row"] == 0).all()
    assert (tmp_path / "ensemble_quality_quick.png").stat().st_size > 1000
    assert "## Ambiguity 1.0, embedder minilm@t5like" in (tmp_path / "ensemble_quality_quick.md").read_text()
    for name in ("combination_1.0.csv", "combination_1.0_t5like.csv"):
        comb = pd.read_csv(tmp_path / name)
        assert comb["tuned"].sum() == 1 and "first" in set(comb["strategy"])
        # the learned heads' strategies are in the grid, each checked against the best fixed strategy
        assert {"verifier-rerank", "verifier-drop", "embedding-rerank"} <= set(comb["strategy"])
        md = (tmp_path / name).with_suffix(".md").read_text()
        assert "Head **verifier**" in md and "Head **embedding**" in md
    assert "served weights" in (tmp_path / "ensemble_quality_quick.md").read_text()
    # the anisotropic geometry raises every score of the same texts (cosines move toward 1)
    plain, t5like = (
        frame[frame.embedder == e].set_index(["split", "strategy"]).score for e in ("minilm", "minilm@t5like")
    )
    common = plain.index.intersection(t5like.index)  # the tuned row's name may differ between geometries
    assert len(common) > 10 and (t5like.loc[common] > plain.loc[common]).mean() > 0.9
    line = json.loads((tmp_path / "cache" / "samples-1.0" / "test.jsonl").read_text().splitlines()[1])
    assert {s["adapter"] for s in line["samples"]} == {"tiny-a", "tiny-b"}
