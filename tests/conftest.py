"""Shared fixtures: one tiny model per session, engines shared per module (a vLLM engine takes seconds)."""

from __future__ import annotations

import os

import pytest

# vLLM reads these at engine start; small KV cache for a 24 GiB machine shared with other tests.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub; fail fast instead of retrying


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny Mixtral with three LoRA adapters (tiny-a r4, tiny-b r8, tiny-c r16)."""
    from recoverlib.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "tiny", adapters=3, seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    return tiny_dir / "model"


@pytest.fixture(scope="session")
def tiny_adapters(tiny_dir):
    from recoverlib.tiny import adapter_paths

    return adapter_paths(tiny_dir)


@pytest.fixture(scope="session")
def scorer():
    from recoverlib.metric import Scorer

    return Scorer("minilm", progress=False)


@pytest.fixture(scope="session")
def sample_csv():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "examples" / "data" / "sample.csv"


@pytest.fixture(scope="session")
def sample_truth_csv(sample_csv):
    return sample_csv.with_name("sample_truth.csv")


@pytest.fixture(scope="session")
def tiny_dense(tmp_path_factory):
    """``tiny_dense(family)`` -> a tiny dense base (mistral, llama, qwen2, gemma) with one LoRA adapter
    (``tiny-a``: attention and MLP), made once per session by transformers' and PEFT's own saves."""
    from recoverlib.tiny import make_tiny

    root, made = tmp_path_factory.mktemp("tiny-dense"), {}

    def get(family: str):
        if family not in made:
            made[family] = make_tiny(root / family, adapters=1, seed=0, family=family)
        return made[family]

    return get


@pytest.fixture(scope="module", autouse=True)
def engines_closed_by_module_end():
    """Every vLLM engine a test module starts in this process is closed by the module's end: an engine left
    open holds what vLLM wrote into ``os.environ`` (``LD_PRELOAD`` with torch's libgomp), and every process
    started later (a user's ``predict``, a server) would inherit it. Found when a module-scoped head engine
    made a later test's ``predict`` start without libiomp5."""
    from recoverlib.runtime import ENGINE_ENVIRON

    before = os.environ.get("LD_PRELOAD")
    yield
    held = ENGINE_ENVIRON.holders
    if os.environ.get("LD_PRELOAD") != before:
        pytest.fail(f"this module left LD_PRELOAD={os.environ.get('LD_PRELOAD')!r} (it was {before!r}); "
                    f"{held} vLLM engine(s) still open: close them in the fixture that made them")
