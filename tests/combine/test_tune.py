import json

import numpy as np
import pytest

from recoverlib.cli import main
from recoverlib.combine import MbrConfig, load_combination
from recoverlib.combine.tune import (
    Candidate,
    bootstrap_interval,
    default_candidates,
    format_table,
    score_candidates,
    select,
)
from recoverlib.errors import RecoverlibError
from recoverlib.io import read_samples, read_truth

from .synth import make_split


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    d = tmp_path_factory.mktemp("tune")
    make_split(d / "val.jsonl", d / "val.csv", rows=24, agree=0.5, seed=1)
    make_split(d / "test.jsonl", d / "test.csv", rows=16, agree=0.5, seed=2, prefix="t")
    return d


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    x = np.arange(100, dtype=float)
    lo, hi = bootstrap_interval(x, np.random.default_rng(0))
    assert lo < x.mean() < hi
    assert (lo, hi) == bootstrap_interval(x, np.random.default_rng(0))


def test_grid_and_selection():
    names = [c.name for c in default_candidates("Improve it.", "zz")]
    assert names[0] == "first" and "mbr-4+mean?+suffix" in names and len(set(names)) == len(names)
    assert [c.name for c in select(default_candidates(), ["mbr-2"])] == ["first", "mbr-2"]
    with pytest.raises(RecoverlibError, match="unknown strategy name"):
        select(default_candidates(), ["nope"])


def test_scores_are_repeatable_and_paired_against_first(split, ctx):
    samples, truth = read_samples(split / "val.jsonl"), read_truth(split / "val.csv")
    cands = [Candidate("mbr-4", MbrConfig()), Candidate("concat", default_candidates()[2].config)]
    one = score_candidates(samples, truth, cands, ctx, np.random.default_rng(3), 200, progress=False)
    two = score_candidates(samples, truth, cands, ctx, np.random.default_rng(3), 200, progress=False)
    assert [(r.name, r.score, r.low, r.diff_high) for r in one] == [
        (r.name, r.score, r.low, r.diff_high) for r in two
    ]
    first = next(r for r in one if r.name == "first")
    assert first.diff == 0 and {r.name for r in one} == {"first", "mbr-4", "concat"}
    assert all(r.low <= r.score <= r.high and r.diff_low <= r.diff <= r.diff_high for r in one)
    assert "| mbr-4 |" in format_table(one)


def test_tune_cli_writes_a_config_that_carries_to_another_split(split, tmp_path, capsys, cli_scorer):
    (tmp_path / "mean.txt").write_text("Rewrite the text.\n")
    args = [
        "tune",
        "--samples-file",
        str(split / "val.jsonl"),
        "--truth",
        str(split / "val.csv"),
        "--embedder",
        "minilm",
        "--strategies",
        "concat",
        "mbr-2",
        "mbr-4+mean?",
        "--mean-prompt",
        str(tmp_path / "mean.txt"),
        "--bootstrap",
        "100",
        "--out",
        str(tmp_path / "best.json"),
    ]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "best:" in table and "mbr-4+mean?" in table
    doc = json.loads((tmp_path / "best.json").read_text())
    assert doc["info"]["name"] in table and doc["combination"]["strategy"]
    first = (tmp_path / "best.json").read_text()
    assert main([*args[:-1], str(tmp_path / "again.json")]) == 0
    assert (
        json.loads((tmp_path / "again.json").read_text())["combination"] == json.loads(first)["combination"]
    )
    load_combination(tmp_path / "best.json")
    out = tmp_path / "sub.csv"
    assert (
        main(
            [
                "combine",
                "--samples-file",
                str(split / "test.jsonl"),
                "--combination",
                str(tmp_path / "best.json"),
                "--out",
                str(out),
                "--embedder",
                "minilm",
            ]
        )
        == 0
    )
    assert list(read_truth(out)) == list(read_samples(split / "test.jsonl"))


@pytest.mark.parametrize("line,match", [("{bad json", "not a samples line"),
                                        ('{"id": "r0", "samples": [{"text": "x"}]}', "not a samples line")])
def test_bad_samples_file_is_one_line(tmp_path, split, capsys, line, match):
    (tmp_path / "s.jsonl").write_text(line + "\n")
    assert main(["tune", "--samples-file", str(tmp_path / "s.jsonl"), "--truth", str(split / "val.csv"),
                 "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err


def test_samples_without_truth_and_bad_combination_are_one_line(tmp_path, split, capsys):
    assert main(["tune", "--samples-file", str(split / "test.jsonl"), "--truth", str(split / "val.csv"),
                 "--out", str(tmp_path / "o.json")]) == 2
    assert "no truth" in capsys.readouterr().err
    (tmp_path / "c.json").write_text('{"strategy": "mbr", "max_parts": -1}')
    assert (
        main(
            [
                "combine",
                "--samples-file",
                str(split / "test.jsonl"),
                "--combination",
                str(tmp_path / "c.json"),
                "--out",
                str(tmp_path / "o.csv"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "max_parts" in err and "\n" not in err


def test_a_tune_stopped_part_way_resumes_and_writes_the_same_bytes(split, tmp_path, ctx, monkeypatch):
    from recoverlib.combine import tune as tune_module

    samples, truth = read_samples(split / "val.jsonl"), read_truth(split / "val.csv")
    kw = {"strategies": ["concat", "mbr-2", "mbr-4"], "n_boot": 100, "seed": 4}
    whole = tmp_path / "whole.json"
    tune_module.tune(samples, truth, ctx, out=str(whole), **kw)
    assert not (tmp_path / "whole.json.partial.jsonl").exists()  # removed once the result is written

    real, calls = tune_module.combine_rows, []

    def dies_on_mbr4(rows, config, ctx, progress=True):
        calls.append(config)
        if getattr(config, "max_parts", None) == 4:
            raise KeyboardInterrupt  # the kill, after first, concat and mbr-2 were saved
        return real(rows, config, ctx, progress=progress)

    out = tmp_path / "out.json"
    monkeypatch.setattr(tune_module, "combine_rows", dies_on_mbr4)
    with pytest.raises(KeyboardInterrupt):
        tune_module.tune(samples, truth, ctx, out=str(out), **kw)
    partial = tmp_path / "out.json.partial.jsonl"
    assert not out.exists() and len(partial.read_text().splitlines()) == 1 + 3
    with partial.open("a") as fh:
        fh.write('{"name": "mbr-4", "conf')  # a kill mid-line: dropped on resume
    monkeypatch.setattr(tune_module, "combine_rows", real)
    calls.clear()
    monkeypatch.setattr(tune_module, "combine_rows", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    tune_module.tune(samples, truth, ctx, out=str(out), **kw)
    assert [getattr(c, "max_parts", None) for c in calls] == [4]  # only the candidate not saved yet
    assert out.read_bytes() == whole.read_bytes() and not partial.exists()


def test_a_partial_tune_of_other_inputs_is_refused(split, tmp_path, ctx):
    from recoverlib.combine.tune import tune

    samples, truth = read_samples(split / "val.jsonl"), read_truth(split / "val.csv")
    out = tmp_path / "out.json"
    (tmp_path / "out.json.partial.jsonl").write_text(json.dumps({"digest": "0" * 64}) + "\n")
    with pytest.raises(RecoverlibError, match="partial tune of other samples"):
        tune(samples, truth, ctx, strategies=["concat"], n_boot=10, out=str(out))
    (tmp_path / "out.json.partial.jsonl").write_text("garbage\n")
    with pytest.raises(RecoverlibError, match="not a partial tune"):
        tune(samples, truth, ctx, strategies=["concat"], n_boot=10, out=str(out))
