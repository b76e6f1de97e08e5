"""The trained tiny model: layout, cache, determinism; and (slow) that it and its adapters learned the
task."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from recoverlib.synthetic import TaskConfig
from recoverlib.tiny import adapter_paths
from recoverlib.tiny.trained import TrainedTinyConfig, make_trained_tiny
from recoverlib.training.pretrain import PretrainConfig

SMALL = TrainedTinyConfig(task=TaskConfig(rows=64, eval_rows=8), pretrain=PretrainConfig(epochs=1))


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_layout_cache_and_determinism(tmp_path, monkeypatch):
    monkeypatch.setenv("RECOVERLIB_CACHE", str(tmp_path / "cache"))
    out = make_trained_tiny(tmp_path / "a", adapters=1, seed=3, config=SMALL)
    assert (out / "model" / "config.json").is_file() and (out / "task" / "train.csv").is_file()
    assert list(adapter_paths(out)) == ["tiny-a"]
    assert (
        json.loads((out / "adapters" / "tiny-a" / "recoverlib_adapter.json").read_text())["prime"]
        == "Rewrite"
    )
    start = time.perf_counter()
    again = make_trained_tiny(tmp_path / "b", adapters=1, seed=3, config=SMALL)  # from the cache
    assert time.perf_counter() - start < 5
    fresh = make_trained_tiny(tmp_path / "c", adapters=1, seed=3, config=SMALL, cache=False)
    for rel in ("model/model.safetensors", "adapters/tiny-a/adapter_model.safetensors", "task/train.csv"):
        assert _sha(out / rel) == _sha(again / rel) == _sha(fresh / rel), rel


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    start = time.perf_counter()
    out = make_trained_tiny(tmp_path_factory.mktemp("trained"), adapters=2)
    print(f"make_trained_tiny: {time.perf_counter() - start:.0f} s (cache hit if a few s)")
    return out


@pytest.mark.slow
def test_trained_base_and_adapters_beat_the_constant_prompt(trained, scorer):
    from recoverlib.io import read_rows
    from recoverlib.training.evaluate import best_constant_prompt

    from .greedy_score import score_model

    train = read_rows(trained / "task" / "train.csv", with_truth=True)
    val = read_rows(trained / "task" / "validation.csv", with_truth=True)
    const, _ = best_constant_prompt([r.rewrite_prompt for r in train], scorer=scorer)
    const_score = scorer.score([const] * len(val), [r.rewrite_prompt for r in val])
    base_score, _ = score_model(trained / "model", val, scorer)
    scores = {
        name: score_model(trained / "model", val, scorer, path)[0]
        for name, path in adapter_paths(trained).items()
    }
    print(f"constant {const!r}: {const_score:.3f}; base {base_score:.3f}; adapters {scores}")
    assert base_score >= const_score + 0.20
    assert all(s >= const_score + 0.10 for s in scores.values())  # a prime narrows the wordings it can say


@pytest.mark.slow
def test_adapter_on_a_one_epoch_base_beats_it(trained, scorer, tmp_path):
    from recoverlib.io import read_rows
    from recoverlib.tiny.model import save_model
    from recoverlib.training.lora import TrainConfig, train_adapter
    from recoverlib.training.pretrain import new_model, pretrain, task_tokenizer

    from .greedy_score import score_model

    train = read_rows(trained / "task" / "train.csv", with_truth=True)
    val = read_rows(trained / "task" / "validation.csv", with_truth=True)
    start = time.perf_counter()
    tok = task_tokenizer(
        [t for r in train for t in (r.original_text, r.rewritten_text, r.rewrite_prompt)], 2048
    )
    model = new_model(tok, seed=0)
    pretrain(model, tok, train, (), PretrainConfig(epochs=1))
    base = save_model(model, tok, tmp_path / "base1")
    base_seconds = time.perf_counter() - start
    # Attention-only LoRA gained only about +0.025 (0.32 -> 0.35): the one-epoch base is already good, and
    # what it still lacks sits mostly in the experts (HFEngine serves such an adapter; vLLM on CPU cannot).
    config = TrainConfig(rank=32, alpha=64, epochs=2, lr=1e-2, batch_size=32, max_rows=3000, score_rows=0,
                         targets="attention+experts")
    result = train_adapter(base, train, tmp_path / "ad", val, config)
    before, _ = score_model(base, val, scorer)
    after, _ = score_model(base, val, scorer, result.adapter)
    print(
        f"one-epoch base {before:.3f} ({base_seconds:.0f} s), + adapter {after:.3f} ({result.seconds:.0f} s)"
    )
    # Measured +0.077 (0.320 -> 0.396) in Nov 2026 and +0.037 (0.320 -> 0.357) on Dec 3 with the same code
    # (the commit before this session's changes gives 0.357 too): the gain is real, its size is not stable to
    # 0.05.
    assert after >= before + 0.03


@pytest.mark.slow
def test_engines_agree_on_a_trained_primed_adapter(trained):
    from recoverlib.adapters import adapter_prime
    from recoverlib.engines import EngineConfig, SamplingConfig, make_engine
    from recoverlib.io import read_rows
    from recoverlib.prompt import RecoveryTemplate, clean_prediction

    rows = read_rows(trained / "task" / "validation.csv", with_truth=True)[:16]
    adapters = adapter_paths(trained)
    prime = adapter_prime(adapters["tiny-a"])
    assert prime == "Rewrite"
    outs = {}
    for name in ("hf", "vllm"):
        with make_engine(name, trained / "model", adapters, EngineConfig()) as engine:
            prompts = [
                RecoveryTemplate().render(engine.tokenizer, r.original_text, r.rewritten_text, prime)
                for r in rows
            ]
            raw = engine.generate(
                prompts, SamplingConfig(temperature=0, max_new_tokens=24), adapters=["tiny-a"]
            )
        outs[name] = [clean_prediction(t[0], prime=prime) for t in raw["tiny-a"]]
    assert all(p.startswith(prime + " ") for p in outs["hf"] + outs["vllm"])
    same = sum(a == b for a, b in zip(outs["hf"], outs["vllm"], strict=True))
    assert same >= 0.75 * len(rows), list(zip(outs["hf"], outs["vllm"], strict=True))
