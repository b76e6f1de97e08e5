"""The local executor's engine lifetime: built once per run, or again every ``recycle_rows`` rows with the
same samples."""

from __future__ import annotations

import pytest

from recoverlib.engines import SamplingConfig
from recoverlib.errors import RecoverlibError
from recoverlib.executors.base import EngineSpec
from recoverlib.pipeline import PredictConfig, predict


def _run(tiny_model, tiny_adapters, sample_csv, out_dir, monkeypatch, **config):
    builds = []
    real = EngineSpec.build
    monkeypatch.setattr(EngineSpec, "build", lambda spec: builds.append(1) or real(spec))
    out_dir.mkdir()
    predict(
        tiny_model, sample_csv, out_dir / "sub.csv", adapters={"a": tiny_adapters["tiny-a"]}, engine="hf",
        config=PredictConfig(SamplingConfig(samples=2, max_new_tokens=6), chunk_rows=4, **config),
        samples_file=out_dir / "samples.jsonl",
    )
    return len(builds), (out_dir / "samples.jsonl").read_bytes(), (out_dir / "sub.csv").read_bytes()


def test_recycled_engines_write_the_same_bytes(tiny_model, tiny_adapters, sample_csv, tmp_path, monkeypatch):
    once = _run(tiny_model, tiny_adapters, sample_csv, tmp_path / "once", monkeypatch)
    recycled = _run(tiny_model, tiny_adapters, sample_csv, tmp_path / "recycled", monkeypatch, recycle_rows=4)
    assert once[0] == 1
    assert recycled[0] == 3  # 12 rows in chunks of 4: each chunk on an engine of its own
    assert recycled[1:] == once[1:] and once[1]


def test_recycle_rows_must_be_positive():
    with pytest.raises(RecoverlibError, match="recycle_rows must be >= 1"):
        PredictConfig(recycle_rows=0)
