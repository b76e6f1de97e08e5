"""benchmarks/combination.py end to end on small constructed splits (quick mode)."""

import pandas as pd

from .synth import make_split


def load():
    from benchmarks import combination

    return combination


def test_quick_benchmark_writes_md_csv_png(tmp_path, ctx, capsys):
    make_split(tmp_path / "v.jsonl", tmp_path / "v.csv", rows=12, agree=0.4, seed=3)
    make_split(tmp_path / "t.jsonl", tmp_path / "t.csv", rows=12, agree=0.4, seed=4, prefix="t")
    (tmp_path / "mean.txt").write_text("Rewrite the text.")
    argv = ["--val-samples", str(tmp_path / "v.jsonl"), "--val-truth", str(tmp_path / "v.csv"),
            "--test-samples", str(tmp_path / "t.jsonl"), "--test-truth", str(tmp_path / "t.csv"),
            "--quick", "--mean-prompt", str(tmp_path / "mean.txt"), "--out", str(tmp_path / "out")]
    assert load().main(argv, ctx) == 0
    frame = pd.read_csv(tmp_path / "out" / "combination.csv")
    assert set(frame.strategy) == {"first", "medoid", "concat", "mbr-2"} and frame.tuned.sum() == 1
    assert (frame.test_low <= frame.test_score).all() and (frame.test_score <= frame.test_high).all()
    assert frame.loc[frame.strategy == "first", "vs_first"].item() == 0
    assert "vs first" in (tmp_path / "out" / "combination.md").read_text()
    assert (tmp_path / "out" / "combination.png").stat().st_size > 1000
    assert "tuned:" in capsys.readouterr().out


def test_bad_input_is_one_line(tmp_path, ctx, capsys):
    make_split(tmp_path / "v.jsonl", tmp_path / "v.csv", rows=3, seed=3)
    argv = ["--val-samples", str(tmp_path / "v.jsonl"), "--val-truth", str(tmp_path / "v.csv"),
            "--test-samples", str(tmp_path / "missing.jsonl"), "--test-truth", str(tmp_path / "v.csv"),
            "--quick", "--out", str(tmp_path / "out")]
    assert load().main(argv, ctx) == 2
    assert "no such samples file" in capsys.readouterr().err


def test_head_check_compares_the_validation_choice_with_the_best_fixed_on_test():
    import numpy as np

    from recoverlib.combine.tune import Result

    def result(name, rows, seconds=1.0):
        rows = np.array(rows, dtype=float)
        return Result(name, None, rows.mean(), 0, 0, 0, 0, 0, seconds, rows)

    val = [result("mbr-4", [0.5] * 4), result("verifier-drop", [0.6] * 4),
           result("verifier-rerank", [0.4] * 4)]
    test = [result("mbr-4", [0.5, 0.5, 0.5, 0.5]), result("medoid", [0.6, 0.4, 0.6, 0.4]),
            result("verifier-drop", [0.55, 0.56, 0.57, 0.58], seconds=2.0),
            result("verifier-rerank", [0.9] * 4)]
    got = load().head_checks(val, test, np.random.default_rng(0), 200)
    assert set(got) == {"verifier"}  # no embedding head in the grid
    check = got["verifier"]
    # the head strategy chosen on validation (drop), not the one best on test (rerank)
    assert (check["strategy"], check["fixed"]) == ("verifier-drop", "mbr-4")
    assert abs(check["diff"] - 0.065) < 1e-9
    assert check["low"] > 0 and check["goal"] and check["s_per_row"] == 0.5
    md = "\n".join(load().head_lines(got))
    assert "verifier-drop" in md and "**True**" in md
