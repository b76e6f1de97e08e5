"""Optional features and the extras that bring what they import: declared in pyproject.toml, and a missing one
is one line naming the extra (``make wheel-check`` installs a wheel with them into a fresh environment)."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from recoverlib.errors import RecoverlibError

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_every_optional_import_has_an_extra():
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    named = {extra: " ".join(reqs) for extra, reqs in extras.items()}
    assert "ray==" in named["ray"] and "requests" in named["openai"] and "pyarrow" in named["parquet"]


@pytest.mark.parametrize(("module", "call", "extra"), [
    ("ray", lambda: __import__("recoverlib.executors.ray", fromlist=["x"]).import_ray(), "recoverlib[ray]"),
    ("requests", lambda: __import__("recoverlib.engines.openai_client", fromlist=["x"]).import_requests(),
     "recoverlib[openai]"),
    ("pyarrow", lambda: __import__("recoverlib.io", fromlist=["x"]).require_pyarrow(), "recoverlib[parquet]"),
])
def test_a_missing_optional_library_is_one_line_naming_its_extra(monkeypatch, module, call, extra):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it raises ImportError
    with pytest.raises(RecoverlibError, match=rf"pip install '{extra.replace('[', '.').replace(']', '.')}'"):
        call()


def test_parquet_without_pyarrow_is_refused_before_any_sampling(monkeypatch, tmp_path, sample_csv):
    from recoverlib.pipeline import predict

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(RecoverlibError, match="Parquet needs pyarrow"):
        predict("/nonexistent-model", sample_csv, tmp_path / "sub.parquet", engine="hf")
    assert not list(tmp_path.iterdir())
