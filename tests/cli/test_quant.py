import json

import pytest

from recoverlib.cli import main
from recoverlib.errors import RecoverlibError


def test_quantize_then_inspect_json(base, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(base), "--plan", "bnb-int8", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "audit ok" in captured.err and not captured.out  # progress on stderr, stdout for output only
    assert main(["inspect", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["groups"]["experts"]["bits"] == 8 and data["groups"]["router"]["bits"] == 16
    assert data["total_bytes"] == data["planned_bytes"]
    assert json.loads((out / "recoverlib_quant.json").read_text())["backend"] == "bnb"


def test_inspect_plain_checkpoint_table(base, capsys):
    assert main(["inspect", str(base)]) == 0
    assert "experts" in capsys.readouterr().out


def test_errors_are_one_line(base, tmp_path, capsys):
    assert main(["quantize", "--model", str(base), "--plan", "nope", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recoverlib: error: unknown plan 'nope'") and "\n" not in err


def test_add_quant_commands_registers_quantize_convert_and_inspect(base):
    import argparse

    from recoverlib.cli.quant import add_commands, cmd_convert, cmd_inspect, cmd_quantize

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["inspect", str(base), "--json"])
    assert args.func is cmd_inspect and args.json
    args = parser.parse_args(
        [
            "quantize",
            "--model",
            str(base),
            "--plan",
            "gptq-4",
            "--out",
            "q",
            "--template",
            "plain",
            "--max-shard-size",
            "1GB",
        ]
    )
    assert args.func is cmd_quantize and (args.plan, args.template, args.max_shard_size) == (
        "gptq-4",
        "plain",
        "1GB",
    )
    args = parser.parse_args(["convert", "--model", str(base), "--out", "c"])
    assert args.func is cmd_convert and str(args.out) == "c"


def test_quantizing_a_quantized_checkpoint_fails(quantized):
    from recoverlib.quant import quantize

    with pytest.raises(RecoverlibError, match="already quantized"):
        quantize(quantized("bnb-nf4").out, "hqq-4", "/nonexistent")


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["bnb-nf4", "hqq-4", "gptq-4"])
def test_inspect_json_parses_for_every_backend(preset, quantized):
    """Through a fresh process, where GPTQModel's import banner would land on stdout before the JSON."""
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "recoverlib.cli", "inspect", str(quantized(preset).out), "--json"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["groups"]["experts"]["bits"] == 4
