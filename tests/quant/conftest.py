"""Shared fixtures: one tiny Mixtral (two LoRA adapters) per session and a cache of quantized copies."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

ERROR_BOUND = {8: 0.12, 4: 0.45, 3: 0.55, 2: 0.7}  # relative logits error vs bf16, by the plan's lowest bits


@pytest.fixture(scope="session", autouse=True)
def _hf_home(tmp_path_factory):
    # gptqmodel points HF_HOME at a temp folder on import unless it is set; keep every cache in the session's
    # tmp.
    os.environ.setdefault("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))


@pytest.fixture(scope="session")
def quant_tiny(tmp_path_factory):
    from recoverlib.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny"), adapters=2, seed=0)


@pytest.fixture(scope="session")
def base(quant_tiny):
    return quant_tiny / "model"


@pytest.fixture(scope="session")
def ref_model(base):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).eval()


@pytest.fixture(scope="session")
def input_ids():
    import torch

    return torch.randint(3, 2048, (2, 32), generator=torch.Generator().manual_seed(0))


class Quantized:
    """One preset quantized by ``recoverlib quantize`` (streaming), its audit, and the model loaded from
    disk."""

    def __init__(self, preset, base, out):
        from recoverlib.quant.api import inspect_checkpoint, load_quantized, quantize

        self.out = quantize(base, preset, out, seed=0, progress=False)
        self.report = inspect_checkpoint(self.out)
        self.reloaded = load_quantized(self.out)


@pytest.fixture(scope="session")
def quantized(base, tmp_path_factory):
    """``quantized(preset)`` -> :class:`Quantized`, made once per session."""
    cache: dict[str, Quantized] = {}
    root = tmp_path_factory.mktemp("quantized")

    def get(preset: str) -> Quantized:
        if preset not in cache:
            cache[preset] = Quantized(preset, base, root / preset)
        return cache[preset]

    return get
