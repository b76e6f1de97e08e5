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


def test_add_quant_commands_registers_both(base):
    import argparse

    from recoverlib.quant.cli import add_quant_commands, cmd_inspect

    parser = argparse.ArgumentParser()
    add_quant_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["inspect", str(base), "--json"])
    assert args.func is cmd_inspect and args.json


def test_quantizing_a_quantized_checkpoint_fails(quantized):
    from recoverlib.quant import quantize

    with pytest.raises(RecoverlibError, match="already quantized"):
        quantize(quantized("bnb-nf4").out, "hqq-4", "/nonexistent")
