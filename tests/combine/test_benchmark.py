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
