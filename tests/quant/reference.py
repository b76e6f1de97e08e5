"""Whole-model quantization through each library's own path: the reference the streaming quantize must equal.

recoverlib quantizes one linear at a time (its piece loop, or GPTQModel's layer loop with disk offloading);
these are the libraries' whole-model routes, kept in the tests only: transformers' bitsandbytes integration
loading the whole model with a ``BitsAndBytesConfig``, hqq's ``HQQLinear`` over every linear of the loaded
model, and GPTQModel's quantize + save of the whole model (its own layout, ``mlp.experts.N.gate_proj``).
"""

from __future__ import annotations

import json
from pathlib import Path


def whole_model_checkpoint(base: Path, preset: str, out: Path, seed: int = 0) -> Path:
    """Quantize the whole model ``base`` in memory the library's own way and save its tensors to ``out``."""
    from recoverlib.quant.backends import get_backend
    from recoverlib.quant.plan import load_plan

    plan = load_plan(preset)
    backend = get_backend(plan.backend)
    backend.validate(plan)
    out.mkdir(parents=True)
    {"bnb": _bnb, "hqq": _hqq, "gptq": _gptq}[plan.backend](backend, base, plan, out, seed)
    return out


def _bnb(backend, base: Path, plan, out: Path, seed: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from recoverlib.quant.backends.bnb import cpu_safe
    from recoverlib.quant.moe import split_moe

    with split_moe():
        model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, plan.compute_dtype),
                                                     quantization_config=backend.config(plan))
    model = cpu_safe(model).eval()
    model.config.save_pretrained(out)
    _save_state(model.state_dict(), out)


def _hqq(backend, base: Path, plan, out: Path, seed: int) -> None:
    import torch
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear
    from torch import nn
    from transformers import AutoModelForCausalLM

    from recoverlib.module_groups import group_of
    from recoverlib.quant.moe import split_moe

    compute = getattr(torch, plan.compute_dtype)
    with split_moe():
        model = AutoModelForCausalLM.from_pretrained(base, dtype=compute)
    targets = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and plan.group(group_of(n)).quantized
    ]
    with backend.session(plan, "cpu"):
        for name, module in targets:
            prec = plan.group(group_of(name))
            cfg = BaseQuantizeConfig(nbits=prec.bits, group_size=prec.group_size, axis=1)
            parent, _, child = name.rpartition(".")
            setattr(
                model.get_submodule(parent),
                child,
                HQQLinear(module, cfg, compute_dtype=compute, device="cpu", del_orig=True),
            )
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, HQQLinear):
            module.encoded_state_dict = True
            state.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    quantized = {k.rsplit(".", 1)[0] for k in state}
    state.update({k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] not in quantized})
    _save_state(state, out)


def _gptq(backend, base: Path, plan, out: Path, seed: int) -> None:
    import tempfile

    from recoverlib.quant.calibration import calibration_texts

    texts = calibration_texts(None, base, seed)
    with tempfile.TemporaryDirectory(prefix="gptq-reference-") as scratch:
        backend.quantize_to(base, plan, texts, seed, "cpu", Path(scratch), out, max_shard_bytes=None)


def _save_state(state: dict, out: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})


def tensors(path: Path, names=None) -> dict:
    """Every tensor of a checkpoint folder, keyed by ``names(name)`` (e.g. the in-memory name)."""
    from recoverlib.quant.checkpoint import Checkpoint

    ckpt = Checkpoint.open(path)
    return {(names or str)(k): v for k, v in ckpt.read(ckpt.files).items()}


def quant_config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text()).get("quantization_config") or {}
