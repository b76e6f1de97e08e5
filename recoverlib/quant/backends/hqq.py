"""HQQ through hqq's own API (``HQQLinear``, pytorch backend on CPU): any bits/group per module group.

transformers' ``HqqConfig`` is not implemented in transformers 5 and hqq's ``save_quantized`` drops fused
experts, so linears are replaced one by one by recoverlib's piece loop and saved as hqq's encoded state dicts.
Scales and zeros stay in the compute dtype (hqq's 8-bit meta quantization cannot be serialized to safetensors).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

from recoverlib.errors import RecoverlibError
from recoverlib.quant.backends.base import LinearStorage, QuantBackend
from recoverlib.quant.layerwise import load_model, single_device
from recoverlib.quant.plan import DTYPE_BYTES, GroupPrecision, PrecisionPlan

HQQ_MARKER = {"quant_method": "hqq", "loader": "recoverlib.quant.load_quantized"}
# values per storage word: 2/4/8-bit pack into uint8, 3-bit packs 10 values into an int32
PACKING = {2: (4, 1), 3: (10, 4), 4: (2, 1), 8: (1, 1)}


class HqqBackend(QuantBackend):
    name = "hqq"
    pip_name = "hqq==0.2.8.post1"

    def validate(self, plan: PrecisionPlan) -> None:
        for group, prec in plan.groups().items():
            if prec.quantized and prec.group_size is None:
                raise RecoverlibError(f"plan {plan.name!r}: hqq needs a group_size for {group}")
        if plan.embeddings.quantized:
            raise RecoverlibError(f"plan {plan.name!r}: the hqq backend quantizes linears only; keep embeddings at null")

    def load(self, path: Path, plan: PrecisionPlan, device_map: str | dict | None = None):
        """Read a checkpoint (one file or HF shards) piece by piece onto one device."""

        device = single_device(device_map, self.name)

        with self.session(plan, device):
            return load_model(path, plan, self, device)

    @contextmanager
    def session(self, plan: PrecisionPlan, device: str):
        """hqq's backend is class-wide: the PyTorch reference backend only for a CPU run, restored on exit
        (on a GPU hqq keeps whatever fast backend it or the user chose)."""
        self.require("hqq")
        from hqq.core.quantize import HQQBackend, HQQLinear

        saved = HQQLinear.backend
        if device == "cpu":
            HQQLinear.set_backend(HQQBackend.PYTORCH)
        try:
            yield
        finally:
            HQQLinear.set_backend(saved)

    def quantize_linear(self, linear, prec: GroupPrecision, plan: PrecisionPlan, device: str):
        import torch
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

        cfg = BaseQuantizeConfig(nbits=prec.bits, group_size=prec.group_size, axis=1)
        return HQQLinear(linear, cfg, compute_dtype=getattr(torch, plan.compute_dtype), device=device, del_orig=True)

    def linear_state(self, module) -> dict:
        module.encoded_state_dict = True
        return module.state_dict()

    def load_linear(self, state: dict, shape: tuple[int, int], prec: GroupPrecision, plan: PrecisionPlan, device: str):
        import torch
        from hqq.core.quantize import HQQLinear

        layer = HQQLinear(None, None, compute_dtype=getattr(torch, plan.compute_dtype), device=device)
        layer.load_state_dict(state)
        return layer

    def checkpoint_config(self, config: dict, plan: PrecisionPlan) -> dict:
        # A marker so a plain transformers load fails loudly instead of starting from random experts.
        return {**config, "dtype": plan.compute_dtype, "quantization_config": HQQ_MARKER}

    def describe(self, module) -> LinearStorage | None:
        if type(module).__name__ != "HQQLinear" or getattr(module, "W_q", None) is None:
            return None
        meta = module.meta
        nbytes = _nbytes(module.W_q) + _nbytes(meta["scale"]) + _nbytes(meta["zero"])
        bits, group = int(meta["nbits"]), int(meta["group_size"])
        return LinearStorage(bits, group, math.prod(meta["shape"]), nbytes, f"hqq/{str(module.W_q.dtype).removeprefix('torch.')}")

    def linear_bytes(self, out_features: int, in_features: int, prec: GroupPrecision, compute_dtype: str) -> int:
        groups = out_features * in_features // prec.group_size
        per_word, word_bytes = PACKING[prec.bits]
        payload = math.ceil(groups / per_word) * prec.group_size * word_bytes
        return payload + 2 * groups * DTYPE_BYTES[compute_dtype]  # + one scale and one zero per group


def _nbytes(t) -> int:
    return t.numel() * t.element_size()
