"""The command line as a user meets it: end to end through both engines, and one-line errors for bad input."""

import subprocess
import sys

import pandas as pd
import pytest

from recoverlib.cli import main


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "recoverlib.cli", *map(str, args)], capture_output=True, text=True
    )


def _input_with_a_bad_row(sample_csv, tmp_path):
    frame = pd.read_csv(sample_csv, dtype=str).head(4)
    frame.loc[2, "rewritten_text"] = ""
    path = tmp_path / "in.csv"
    frame.to_csv(path, index=False)
    return path, list(frame["id"])


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_predict_and_score_end_to_end(
    engine, tiny_model, tiny_adapters, sample_csv, sample_truth_csv, tmp_path
):
    if engine == "vllm":
        pytest.importorskip("vllm", reason="vLLM is not installed")
    inp, ids = _input_with_a_bad_row(sample_csv, tmp_path)
    out = tmp_path / "sub.csv"
    res = run_cli("predict", "--model", tiny_model, "--adapter", f"a={tiny_adapters['tiny-a']}",
                  "--adapter", f"b={tiny_adapters['tiny-b']}", "--samples", "2", "--max-new-tokens", "8",
                  "--engine", engine, "--input", inp, "--out", out, "--samples-file", tmp_path / "s.jsonl")
    assert res.returncode == 0, res.stderr[-2000:]
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["id", "rewrite_prompt"] and list(sub["id"]) == ids
    assert all(sub["rewrite_prompt"].str.strip() != "")
    assert f"row id={ids[2]}: empty rewritten_text" in res.stderr
    assert "1 row(s) got the fallback prompt" in res.stdout
    truth = tmp_path / "truth.csv"
    pd.read_csv(sample_truth_csv, dtype=str).head(4).to_csv(truth, index=False)
    res = run_cli("score", "--predictions", out, "--truth", truth, "--embedder", "minilm")
    assert res.returncode == 0 and res.stdout.startswith("score "), res.stderr[-2000:]
    assert -1.0 <= float(res.stdout.split()[1]) <= 1.0


def _error_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("recoverlib: error: ") and "Traceback" not in "".join(err)
    return err[-1]


def _predict(model, inp, *extra):
    return [
        "predict",
        "--model",
        str(model),
        "--input",
        str(inp),
        "--out",
        "/tmp/never.csv",
        "--engine",
        "hf",
        *extra,
    ]


def test_missing_input_file(capsys, tiny_model, tmp_path):
    assert "no such file" in _error_line(capsys, _predict(tiny_model, tmp_path / "x.csv"))


def test_misnamed_column(capsys, tiny_model, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,original,rewritten_text\n1,a,b\n")
    assert "missing column(s) 'original_text'" in _error_line(capsys, _predict(tiny_model, bad))


def test_duplicate_ids(capsys, tiny_model, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,original_text,rewritten_text\n1,a,b\n1,a,b\n")
    assert "duplicate id(s) 1" in _error_line(capsys, _predict(tiny_model, bad))


def test_missing_adapter_folder(capsys, tiny_model, sample_csv, tmp_path):
    line = _error_line(capsys, _predict(tiny_model, sample_csv, "--adapter", f"x={tmp_path / 'nope'}"))
    assert "adapter 'x': no such folder" in line


def test_duplicate_adapter_names(capsys, tiny_model, tiny_adapters, sample_csv):
    a, b = tiny_adapters["tiny-a"], tiny_adapters["tiny-b"]
    line = _error_line(capsys, _predict(tiny_model, sample_csv, "--adapter", f"x={a}", "--adapter", f"x={b}"))
    assert "duplicate adapter name 'x'" in line


def test_not_a_model_folder(capsys, tmp_path, sample_csv):
    assert "not an HF model folder" in _error_line(capsys, _predict(tmp_path, sample_csv))


def test_score_needs_every_truth_id(capsys, tmp_path, sample_truth_csv):
    preds = tmp_path / "p.csv"
    preds.write_text("id,rewrite_prompt\nr01,x\n")
    line = _error_line(
        capsys,
        ["score", "--predictions", str(preds), "--truth", str(sample_truth_csv), "--embedder", "minilm"],
    )
    assert "no prediction for 11 id(s)" in line


def test_make_tiny_cli(tmp_path, capsys):
    assert main(["make-tiny", str(tmp_path / "t"), "--adapters", "1"]) == 0
    assert (tmp_path / "t" / "adapters" / "tiny-a" / "adapter_config.json").is_file()


def test_predict_with_a_tuned_combination_file(tiny_model, tiny_adapters, sample_csv, tmp_path):
    import json

    combo = tmp_path / "combo.json"
    combo.write_text(
        json.dumps({"format": "recoverlib-combination/1", "combination": {"strategy": "medoid"}})
    )
    out = tmp_path / "sub.csv"
    res = run_cli(
        "predict",
        "--model",
        tiny_model,
        "--adapter",
        f"a={tiny_adapters['tiny-a']}",
        "--samples",
        "3",
        "--max-new-tokens",
        "6",
        "--engine",
        "hf",
        "--input",
        sample_csv,
        "--out",
        out,
        "--combination",
        combo,
        "--embedder",
        "minilm",
        "--samples-file",
        tmp_path / "s.jsonl",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    samples = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()[1:]]  # 0: settings
    for prompt, row in zip(sub["rewrite_prompt"], samples, strict=True):
        texts = [s["text"] for s in row["samples"] if s["text"]]
        assert prompt in texts or not texts  # medoid picks one of the row's own samples


def test_bad_combination_file_is_one_line(capsys, tiny_model, sample_csv, tmp_path):
    combo = tmp_path / "combo.json"
    combo.write_text('{"strategy": "no-such-strategy"}')
    line = _error_line(capsys, _predict(tiny_model, sample_csv, "--combination", str(combo)))
    assert "no-such-strategy" in line


def test_console_entry_exits_with_the_command_status(tmp_path):
    # `python -m recoverlib.cli` goes through run(), which ends the process without interpreter teardown.
    res = run_cli(
        "predict", "--model", tmp_path, "--input", tmp_path / "missing.csv", "--out", tmp_path / "o.csv"
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("recoverlib: error: ")


@pytest.mark.slow
def test_two_bases_in_one_run_resume_across_bases(tiny_dir, sample_csv, tmp_path):
    """Two base models served in turn through the CLI: every row combines both bases' samples, the samples
    file records each sample's base, and a run cut after the first base resumes with the second only."""
    import json

    from recoverlib.io import read_samples
    from recoverlib.tiny import make_tiny

    other = make_tiny(tmp_path / "other", adapters=1, seed=1)
    inp = tmp_path / "in.csv"
    inp.write_text("\n".join(sample_csv.read_text().splitlines()[:4]) + "\n")
    samples, out = tmp_path / "s.jsonl", tmp_path / "sub.csv"
    argv = [
        "predict",
        "--model",
        f"first={tiny_dir / 'model'}",
        "--model",
        f"second={other / 'model'}",
        "--adapter",
        f"first:a={tiny_dir / 'adapters' / 'tiny-a'}",
        "--adapter",
        f"second:x={other / 'adapters' / 'tiny-a'}",
        "--samples",
        "2",
        "--max-new-tokens",
        "4",
        "--engine",
        "hf",
        "--input",
        inp,
        "--out",
        out,
        "--samples-file",
        samples,
    ]
    res = run_cli(*argv)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [json.loads(line) for line in samples.read_text().splitlines()[1:]]  # 0: the run's settings
    assert [line["base"] for line in lines] == ["first"] * 3 + ["second"] * 3
    got = read_samples(samples)
    assert {(s.base, s.adapter) for s in got[lines[0]["id"]]} == {("first", "a"), ("second", "x")}
    full = out.read_bytes()
    # as if killed after the first base
    samples.write_text("\n".join(samples.read_text().splitlines()[:4]) + "\n")
    res = run_cli(*argv, "--resume")
    assert res.returncode == 0, res.stderr[-2000:]
    assert out.read_bytes() == full and len(samples.read_text().splitlines()) == 1 + 6
    bad = run_cli(*argv[:5], "--adapter", f"a={tiny_dir / 'adapters' / 'tiny-a'}", *argv[9:])
    assert bad.returncode == 2 and "BASE:NAME=PATH" in bad.stderr
