"""bitsandbytes: NF4 (block 64) or LLM.int8 (per-row scales), experts or a dense MLP included.

Linears are quantized with the same calls as transformers' bitsandbytes integration (so the bytes equal a
transformers load with a ``BitsAndBytesConfig``, checked in the tests), one at a time by recoverlib's piece
loop. Checkpoints carry transformers' ``quantization_config`` and load through transformers with the split
MoE block (:mod:`recoverlib.quant.moe`), which places them across GPUs with a ``device_map``. Groups the plan
keeps in 16 bit go to ``llm_int8_skip_modules`` (bnb matches whole name parts, so ``gate`` skips the router
and not ``gate_proj``).
"""

from __future__ import annotations

import math
from pathlib import Path

from recoverlib.errors import RecoverlibError
from recoverlib.patches import require_attr
from recoverlib.quant.backends.base import LinearStorage, QuantBackend, bias_storage, require_group_sizes
from recoverlib.quant.moe import split_moe
from recoverlib.quant.plan import GroupPrecision, PrecisionPlan

NF4_BLOCK = 64
NF4_CODE = 16  # fp32 entries of the NF4 code book each layer keeps
CPU_BLOCK_N = 32  # bitsandbytes CPU 4-bit kernel packs output rows in blocks of 32
SKIP_NAMES = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "experts": ["experts"],
    # transformers skips a module whose name ends with an entry: a dense model's mlp.gate_proj, and not
    # Mixtral's mlp.experts.0.gate_proj
    "mlp": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    "router": ["gate"],
    "lm_head": ["lm_head"],
}


class BnbBackend(QuantBackend):
    name = "bnb"
    pip_name = "bitsandbytes>=0.50,<0.51"

    def validate(self, plan: PrecisionPlan) -> None:
        require_group_sizes("bitsandbytes", plan, {4: (NF4_BLOCK,), 8: (None,)})
        bits = {p.bits for p in plan.groups().values() if p.quantized}
        if len(bits) > 1:
            raise RecoverlibError(
                f"plan {plan.name!r}: bitsandbytes uses one bit width per model (got {sorted(bits)})"
            )
        for group in ("embeddings", "lm_head"):
            if plan.group(group).quantized:
                raise RecoverlibError(
                    f"plan {plan.name!r}: the bitsandbytes backend keeps {group} in 16 bit; use hqq"
                )

    def config(self, plan: PrecisionPlan):
        """transformers' ``BitsAndBytesConfig`` for ``plan`` (what the checkpoint's config.json carries)."""
        import torch
        from transformers import BitsAndBytesConfig

        self.require("bitsandbytes")
        skip = [n for g, names in SKIP_NAMES.items() if not plan.group(g).quantized for n in names]
        compute = getattr(torch, plan.compute_dtype)
        if any(p.bits == 8 for p in plan.groups().values()):
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=False,
            llm_int8_skip_modules=skip,
        )

    def load(self, path: Path, plan: PrecisionPlan, device_map: str | dict | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        self.require("bitsandbytes")
        # transformers reads the shards one by one and places each tensor straight on its device (several
        # GPUs too).
        with split_moe():
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=getattr(torch, plan.compute_dtype), device_map=device_map
            )
        return cpu_safe(model).eval()

    def _empty_linear(self, out_features: int, in_features: int, prec: GroupPrecision, plan: PrecisionPlan,
                      bias: bool = False):
        """A bitsandbytes linear on the meta device, as transformers' ``replace_with_bnb_linear`` builds
        it."""
        import torch

        bnb = self.require("bitsandbytes")
        config = self.config(plan)
        with torch.device("meta"):
            if prec.bits == 8:
                new = bnb.nn.Linear8bitLt(in_features, out_features, bias, has_fp16_weights=False,
                                          threshold=config.llm_int8_threshold)
            else:
                new = bnb.nn.Linear4bit(
                    in_features,
                    out_features,
                    bias,
                    config.bnb_4bit_compute_dtype,
                    compress_statistics=config.bnb_4bit_use_double_quant,
                    quant_type=config.bnb_4bit_quant_type,
                    quant_storage=config.bnb_4bit_quant_storage,
                )
        return new.requires_grad_(False)

    def quantize_linear(self, linear, prec: GroupPrecision, plan: PrecisionPlan, device: str):
        # The same calls as transformers' Bnb4bitQuantize / Bnb8bitQuantize, so the bytes equal a whole-model
        # load's.
        import bitsandbytes as bnb
        from torch import nn

        new = self._empty_linear(linear.out_features, linear.in_features, prec, plan, linear.bias is not None)
        if linear.bias is not None:  # in the compute dtype, as transformers loads it beside a bnb weight
            new.bias = nn.Parameter(linear.bias.data.to(device), requires_grad=False)
        kwargs = dict(new.weight.__dict__)
        if prec.bits == 8:
            kwargs.pop("SCB", None)
            new.weight = bnb.nn.Int8Params(linear.weight.data.to("cpu"), requires_grad=False, **kwargs).to(
                device
            )
        else:
            new.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, **kwargs).to(device)
        return cpu_safe(new)

    def load_linear(
        self, state: dict, shape: tuple[int, int], prec: GroupPrecision, plan: PrecisionPlan, device: str
    ):
        import bitsandbytes as bnb
        from torch import nn

        bias = state.pop("bias", None)
        new = self._empty_linear(shape[0], shape[1], prec, plan, bias is not None)
        if bias is not None:
            new.bias = nn.Parameter(bias.to(device), requires_grad=False)
        weight = state.pop("weight")
        if prec.bits == 8:
            state.pop("weight_format", None)
            new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False,
                                           SCB=state.pop("SCB")).to(device)
        else:
            new.weight = bnb.nn.Params4bit.from_prequantized(
                data=weight, quantized_stats=state, requires_grad=False, device=device, module=new
            )
        return cpu_safe(new)

    def checkpoint_config(self, config: dict, plan: PrecisionPlan) -> dict:
        return {**config, "dtype": plan.compute_dtype, "quantization_config": self.config(plan).to_dict()}

    def describe(self, module) -> LinearStorage | None:
        name = type(module).__name__
        bias = bias_storage(module)
        if name == "Linear4bit":
            qs = module.weight.quant_state
            extra = qs.absmax.numel() * qs.absmax.element_size() + qs.code.numel() * qs.code.element_size()
            if qs.nested:
                extra += (
                    qs.state2.absmax.numel() * qs.state2.absmax.element_size() + qs.state2.code.numel() * 4
                )
            params = math.prod(qs.shape)
            return LinearStorage(4, qs.blocksize, params + bias[0], _nbytes(module.weight) + extra + bias[1],
                                 f"{qs.quant_type}/uint8")
        if name == "Linear8bitLt":
            scb = module.weight.SCB if getattr(module.weight, "SCB", None) is not None else module.state.SCB
            return LinearStorage(8, None, module.weight.numel() + bias[0],
                                 _nbytes(module.weight) + _nbytes(scb) + bias[1], "int8")
        return None

    def linear_bytes(
        self, out_features: int, in_features: int, prec: GroupPrecision, compute_dtype: str
    ) -> int:
        n = out_features * in_features
        if prec.bits == 8:
            return n + 4 * out_features  # int8 weights + one fp32 scale per row
        return (n + 1) // 2 + 4 * math.ceil(n / NF4_BLOCK) + 4 * NF4_CODE


def cpu_safe(model):
    """Keep 4-bit layers whose output size is not a multiple of 32 (the router: one row per expert) off
    bitsandbytes' repacked CPU kernel, which asserts ``N % 32 == 0`` at the first forward."""
    for module in model.modules():
        if type(module).__name__ == "Linear4bit" and module.out_features % CPU_BLOCK_N:
            require_attr("bnb-cpu-kernel", module, "support_avx512bf16_for_cpu")
            module.support_avx512bf16_for_cpu = False
    return model


def _nbytes(t) -> int:
    return t.numel() * t.element_size()
