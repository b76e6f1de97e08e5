"""Safe loading: safetensors only (no pickle is ever loaded), and no JSON file can make recoverlib import or
run anything it names."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from recoverlib.errors import RecoverlibError

PACKAGE = Path(__file__).resolve().parent.parent / "recoverlib"


def test_every_torch_load_is_weights_only():
    calls = []
    for file in PACKAGE.rglob("*.py"):
        text = file.read_text()
        assert not re.search(r"^\s*(import pickle|from pickle|import dill|import joblib)", text, re.M), file
        for match in re.finditer(r"torch\.load\(", text):
            call = text[match.start() : text.find(")", match.end()) + 1]
            calls.append(call)
            assert "weights_only=True" in call, f"{file}: {call}"


@pytest.fixture
def canary(tmp_path, monkeypatch):
    """A module that records its import: a JSON file naming it must not get it imported."""
    (tmp_path / "recoverlib_canary.py").write_text(
        "import os\nos.environ['RECOVERLIB_CANARY'] = 'imported'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("RECOVERLIB_CANARY", raising=False)
    yield "recoverlib_canary"
    assert "recoverlib_canary" not in sys.modules
    import os

    assert "RECOVERLIB_CANARY" not in os.environ


@pytest.mark.parametrize("doc", [
    {"strategy": "recoverlib_canary"},
    {"strategy": "recoverlib_canary:main"},
    {"strategy": "os.system", "command": "touch /tmp/recoverlib-canary"},
    {"format": "recoverlib-combination/1",
     "combination": {"strategy": "pipeline", "steps": [{"strategy": "__import__"}]}},
    {"strategy": "concat", "__class__": "recoverlib_canary.Thing"},
    {"strategy": "concat", "separator": {"strategy": "recoverlib_canary"}},
])
def test_a_combination_file_cannot_import_what_it_names(doc, canary, tmp_path):
    from recoverlib.combine.configio import load_combination

    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(RecoverlibError):
        load_combination(path)


@pytest.mark.parametrize("doc", [
    {"backend": "recoverlib_canary"},
    {"backend": "os", "experts": {"bits": 4, "group_size": 64}},
    {"backend": "bnb", "loader": "recoverlib_canary"},
])
def test_a_plan_file_cannot_import_what_it_names(doc, canary, tmp_path):
    from recoverlib.quant.backends import get_backend
    from recoverlib.quant.plan import load_plan

    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(RecoverlibError):
        get_backend(load_plan(path).backend)


def test_a_pickle_only_model_is_refused(tmp_path):
    from recoverlib.model_folder import require_model_folder

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(RecoverlibError, match="save_pretrained"):
        require_model_folder(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert require_model_folder(tmp_path) == tmp_path  # safetensors beside it: those are what load
