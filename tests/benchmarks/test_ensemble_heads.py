"""The ensemble benchmark's head cache: a head is reused only for the same examples and settings."""

from __future__ import annotations

from benchmarks import ensemble_heads
from benchmarks.ensemble_heads import examples_digest, trained
from recoverlib.training.head_data import HeadExample
from recoverlib.training.heads import HeadResult, HeadTrainConfig


def test_a_head_is_reused_only_for_the_same_examples_and_settings(tmp_path, monkeypatch):
    calls = []

    def fake_train(model, examples, out, embedder, config):
        calls.append(len(examples))
        out.mkdir(parents=True, exist_ok=True)
        return HeadResult(out, 1, [{"epoch": 1, "val_loss": 0.5}], len(examples))

    monkeypatch.setattr(ensemble_heads, "train_head", fake_train)
    examples = [HeadExample("r1", "a", "b", "c", (0.5,)), HeadExample("r2", "a", "b", "d", (0.25,))]
    config = HeadTrainConfig(kind="verifier")
    first = trained(tmp_path / "m", examples, tmp_path / "v", "minilm", config)
    again = trained(tmp_path / "m", examples, tmp_path / "v", "minilm", config)
    assert calls == [2] and again["reused"] and not first.get("reused")
    assert again["history"] == first["history"] and again["train_s"] == first["train_s"]
    other = [examples[0], HeadExample("r2", "a", "b", "d", (0.3,))]  # one target differs
    assert examples_digest(other) != examples_digest(examples)
    trained(tmp_path / "m", other, tmp_path / "v", "minilm", config)
    trained(tmp_path / "m", other, tmp_path / "v", "minilm", HeadTrainConfig(kind="verifier", epochs=3))
    assert calls == [2, 2, 2]
