from __future__ import annotations

import pytest

from recoverlib.io import read_rows
from recoverlib.prompt import RecoveryTemplate


@pytest.fixture(scope="module")
def rows(sample_csv):
    return read_rows(sample_csv)[:6]


def render(engine, rows, prime=""):
    return [
        RecoveryTemplate().render(engine.tokenizer, r.original_text, r.rewritten_text, prime) for r in rows
    ]


@pytest.fixture(scope="session")
def experts_adapter(tiny_model, tmp_path_factory):
    """A LoRA on the fused expert weights (PEFT target_parameters), which vLLM cannot serve on CPU."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    cfg = LoraConfig(
        r=4, target_modules=["q_proj"], target_parameters=["mlp.experts.gate_up_proj"], lora_dropout=0.0
    )
    out = tmp_path_factory.mktemp("experts") / "experts"
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():  # PEFT starts B at zero (a no-op adapter); make it change the output
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture
def fake_quantized(tiny_model, tmp_path):
    """A copy of the tiny model whose config claims GPTQ 4-bit (enough for the refusals, which read the
    config)."""
    import json
    import shutil

    folder = tmp_path / "q"
    shutil.copytree(tiny_model, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder
