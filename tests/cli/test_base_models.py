"""Base models without a chat template (Mixtral-8x7B-v0.1, Mistral-7B-v0.1 are published so): predict on both
engines, train and GPTQ quantize through the command line, with one note that the plain recovery prompt is
used."""

from __future__ import annotations

import json
import shutil

import pytest

from recoverlib.cli import main

NOTE = "has no chat template: using the plain recovery prompt"


@pytest.fixture(scope="module")
def base_model(tiny_model, tmp_path_factory):
    """The tiny Mixtral without its chat template (transformers 5 keeps it in chat_template.jinja)."""
    from transformers import AutoTokenizer

    out = shutil.copytree(tiny_model, tmp_path_factory.mktemp("base") / "model")
    (out / "chat_template.jinja").unlink()
    assert not AutoTokenizer.from_pretrained(out).chat_template
    return out


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    from recoverlib.synthetic import TaskConfig, write_task

    return write_task(tmp_path_factory.mktemp("task"), TaskConfig(rows=32, eval_rows=4, seed=3))


def _run(capsys, argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_predict_on_a_base_model(engine, base_model, tiny_adapters, sample_csv, tmp_path, capsys):
    if engine == "vllm":
        pytest.importorskip("vllm")
    code, out, err = _run(capsys, ["predict", "--engine", engine, "--model", base_model, "--adapter",
                                   f"a={tiny_adapters['tiny-a']}", "--include-base", "--samples", "1",
                                   "--temperature", "0", "--max-new-tokens", "6", "--input", sample_csv,
                                   "--out", tmp_path / "sub.csv", "--samples-file", tmp_path / "s.jsonl"])
    assert code == 0, err[-2000:]
    assert err.count(NOTE) == 1  # said once per run, not per chunk or row
    lines = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()[1:]]  # 0: settings
    assert lines and {s["adapter"] for s in lines[0]["samples"]} == {None, "a"}
    code, _, err = _run(capsys, ["predict", "--engine", engine, "--template", "chat", "--model", base_model,
                                 "--input", sample_csv, "--out", tmp_path / "x.csv"])
    assert code == 2 and err.strip().endswith(
        "has no chat template (a base model?): use --template plain or auto"
    )


@pytest.mark.slow
def test_train_on_a_base_model_and_serve_the_adapter_with_its_template(
    base_model, tiny_model, task, sample_csv, tmp_path, capsys
):
    code, _, err = _run(
        capsys,
        [
            "train",
            "--model",
            base_model,
            "--train",
            task / "train.csv",
            "--epochs",
            "1",
            "--score-rows",
            "0",
            "--batch-size",
            "8",
            "--lr",
            "1e-3",
            "--out",
            tmp_path / "ad",
        ],
    )
    assert code == 0, err[-2000:]
    assert NOTE in err
    meta = json.loads((tmp_path / "ad" / "recoverlib_adapter.json").read_text())
    assert meta["template"] == "plain"
    # on a base that has a chat template the adapter is still served with the prompt it was trained on ...
    argv = [
        "predict",
        "--engine",
        "hf",
        "--model",
        tiny_model,
        "--adapter",
        f"a={tmp_path / 'ad'}",
        "--samples",
        "1",
        "--temperature",
        "0",
        "--max-new-tokens",
        "4",
        "--input",
        sample_csv,
        "--out",
        tmp_path / "sub.csv",
    ]
    code, _, err = _run(capsys, argv)
    assert code == 0 and NOTE not in err, err[-2000:]
    # ... and asking for the other one is one line
    code, _, err = _run(capsys, [*argv, "--template", "chat"])
    assert code == 2 and "adapter 'a' was trained with the plain recovery prompt, not chat" in err


@pytest.mark.slow
def test_gptq_quantize_calibrates_a_base_model(base_model, tmp_path, capsys):
    code, _, err = _run(
        capsys, ["quantize", "--model", base_model, "--plan", "gptq-attn8-exp4", "--out", tmp_path / "q"]
    )
    assert code == 0, err[-2000:]
    assert err.count(NOTE) == 1 and (tmp_path / "q" / "recoverlib_quant.json").is_file()
