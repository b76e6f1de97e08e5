"""One name per concept on every command, old names kept as warned aliases, and a flat API that loads nothing
heavy."""

import subprocess
import sys

import pytest

from recoverlib.cli import build_parser, main


def _helps():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {name: parser.format_help() for name, parser in sub.choices.items()}


def test_every_command_names_its_output_out_and_its_samples_file_samples_file():
    helps = _helps()
    for name, text in helps.items():
        for old in ("--output", "--save-samples", "--out-dir", "--quantize"):
            assert old not in text, f"{name} --help still shows {old}"
    writers = (
        "predict",
        "make-tiny",
        "make-task",
        "train",
        "quantize",
        "optimize-prompt",
        "search-suffix",
        "tune",
        "combine",
    )
    assert all("--out" in helps[name] for name in writers)
    assert all("--samples-file" in helps[name] for name in ("predict", "search-suffix", "tune", "combine"))
    assert "--samples SAMPLES" in helps["predict"]  # a count, only where it is one


def test_an_old_flag_still_works_and_says_its_new_name(tmp_path, capsys):
    assert main(["make-task", "--rows", "20", "--eval-rows", "10", str(tmp_path / "task")]) == 0
    captured = capsys.readouterr()
    assert "now --out" in captured.err and (tmp_path / "task" / "train.csv").is_file()
    assert main(["combine", "--samples", str(tmp_path / "none.jsonl"), "--combination", "x.json",
                 "--output", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert "--samples is now --samples-file" in err and "--output is now --out" in err


def test_a_required_output_is_required_under_either_name(capsys):
    with pytest.raises(SystemExit):
        main(["combine", "--samples-file", "s.jsonl", "--combination", "c.json"])
    assert "required: --out" in capsys.readouterr().err


def test_import_loads_neither_torch_nor_vllm_nor_the_cli():
    import json

    code = ("import json, sys, recoverlib; print(json.dumps(sorted(m for m in sys.modules if m in "
            "('torch', 'vllm', 'transformers') or m.startswith('recoverlib.cli'))))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(res.stdout) == []


def test_every_public_name_resolves():
    import recoverlib

    missing = [n for n in recoverlib.__all__ if getattr(recoverlib, n, None) is None]
    assert not missing
    for name in (
        "predict",
        "quantize",
        "inspect_checkpoint",
        "train_adapter",
        "write_task",
        "make_tiny",
        "tune",
        "optimize_prompt",
        "search_suffix",
        "combine_rows",
        "VLLMEngine",
        "HFEngine",
    ):
        assert callable(getattr(recoverlib, name)), name
