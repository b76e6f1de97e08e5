"""The same command with the same seed writes the same bytes (tiny inputs, two runs each, fresh outputs)."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from recoverlib.cli import main


def tree_bytes(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_make_task_repeats(tmp_path):
    for name in ("a", "b"):
        assert (
            main(
                [
                    "make-task",
                    "--out",
                    str(tmp_path / name),
                    "--rows",
                    "30",
                    "--eval-rows",
                    "5",
                    "--seed",
                    "3",
                ]
            )
            == 0
        )
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")


def test_make_tiny_repeats(tmp_path):
    for name in ("a", "b"):
        assert main(["make-tiny", "--out", str(tmp_path / name), "--adapters", "1", "--seed", "4"]) == 0
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert a.keys() == b.keys() and a == b


@pytest.fixture
def saved_samples(sample_csv, sample_truth_csv, tmp_path):
    ids = list(pd.read_csv(sample_csv, dtype=str)["id"])
    lines = [{"id": i, "samples": [{"adapter": "a", "index": k, "text": f"Rewrite this {i} as {w}"}
                                   for k, w in enumerate(("a poem", "a letter", "a poem"))]} for i in ids]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_tune_and_combine_repeat(saved_samples, sample_truth_csv, tmp_path):
    for name in ("a", "b"):
        assert (
            main(
                [
                    "tune",
                    "--samples-file",
                    str(saved_samples),
                    "--truth",
                    str(sample_truth_csv),
                    "--embedder",
                    "minilm",
                    "--strategies",
                    "first",
                    "concat",
                    "medoid",
                    "--bootstrap",
                    "50",
                    "--seed",
                    "1",
                    "--out",
                    str(tmp_path / f"{name}.json"),
                ]
            )
            == 0
        )
        assert (
            main(
                [
                    "combine",
                    "--samples-file",
                    str(saved_samples),
                    "--combination",
                    str(tmp_path / f"{name}.json"),
                    "--embedder",
                    "minilm",
                    "--out",
                    str(tmp_path / f"{name}.csv"),
                ]
            )
            == 0
        )
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_predict_repeats(engine, tiny_model, tiny_adapters, sample_csv, tmp_path):
    """Two processes, same seed: the same submission and samples file, byte for byte."""
    if engine == "vllm":
        pytest.importorskip("vllm", reason="vLLM is not installed")
    outs = []
    for name in ("a", "b"):
        cmd = [
            sys.executable,
            "-m",
            "recoverlib.cli",
            "predict",
            "--engine",
            engine,
            "--model",
            str(tiny_model),
            "--adapter",
            f"a={tiny_adapters['tiny-a']}",
            "--adapter",
            f"b={tiny_adapters['tiny-b']}",
            "--input",
            str(sample_csv),
            "--samples",
            "2",
            "--max-new-tokens",
            "6",
            "--temperature",
            "1.0",
            "--seed",
            "9",
            "--out",
            str(tmp_path / f"{name}.csv"),
            "--samples-file",
            str(tmp_path / f"{name}.jsonl"),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
        outs.append(((tmp_path / f"{name}.csv").read_bytes(), (tmp_path / f"{name}.jsonl").read_bytes()))
    assert outs[0] == outs[1]
