"""Published quantized checkpoints of the tiny models, written by their own libraries
(benchmarks/published_checkpoints.py)."""

from __future__ import annotations

import os

import pytest

from benchmarks import published_checkpoints as writers

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")


def _need_gptqmodel() -> None:
    """Skip without GPTQModel, without importing it here (on import it patches transformers for the whole
    process; recoverlib imports it only where it undoes that)."""
    import importlib.util

    if importlib.util.find_spec("gptqmodel") is None:
        pytest.skip("GPTQModel is not installed")


@pytest.fixture(scope="session")
def gptq_written(tiny_model):
    """GPTQModel's checkpoints of the tiny Mixtral (its own expert names), by name (writers.GPTQ_SPECS)."""
    _need_gptqmodel()
    root = writers.gptq_set(tiny_model, writers.GPTQ_SPECS, "mixtral")
    return {name: root / name for name in writers.GPTQ_SPECS}


@pytest.fixture(scope="session")
def gptq_published(gptq_written, tmp_path_factory):
    """The same checkpoints with Mixtral's published expert names (block_sparse_moe.experts.N.w1)."""
    root = tmp_path_factory.mktemp("published")
    return {name: writers.published_names(path, root / name) for name, path in gptq_written.items()}


@pytest.fixture(scope="session")
def mistral(tiny_model, tmp_path_factory):
    return writers.tiny_mistral(tiny_model, tmp_path_factory.mktemp("mistral") / "model")


@pytest.fixture(scope="session")
def mistral_gptq(mistral):
    """GPTQModel's act-order checkpoint of the dense tiny Mistral."""
    _need_gptqmodel()
    return writers.gptq_set(mistral, {"act-g32": writers.G32}, "mistral") / "act-g32"


@pytest.fixture(scope="session")
def ct_attention(tiny_model):
    """llm-compressor's W4A16 of the tiny Mixtral, experts 16-bit (its own environment, cached)."""
    from recoverlib.cache import cache_dir

    try:
        writers.llmcompressor_env()
    except RuntimeError as err:  # no PyPI here
        pytest.skip(str(err))
    key = writers.folder_key(tiny_model / "model.safetensors", *writers.LLMCOMPRESSOR_ENV)
    return writers.compressed_tensors(tiny_model, cache_dir("published-fixtures", f"ct-attn-{key}"), False)
