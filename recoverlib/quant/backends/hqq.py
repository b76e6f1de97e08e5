"""HQQ through hqq's own API (``HQQLinear``, pytorch backend on CPU): any bits/group per module group.

transformers' ``HqqConfig`` is not implemented in transformers 5 and hqq's ``save_quantized`` drops fused
experts, so linears are replaced one by one by recoverlib's piece loop and saved as hqq's encoded state dicts.
Scales and zeros stay in the compute dtype (hqq's 8-bit meta quantization cannot be serialized to
safetensors).

On a CPU, hqq's proximal optimizer runs its own step function on row blocks of 1 MiB
(:func:`blocked_proximal`) instead of the whole matrix: every elementwise op of its 20 iterations made a
fresh full-size fp32 temporary (235 MB for a Mixtral expert), and the kernel's page faults for them were ~70%
of the time. Same steps, same whole-matrix early stop (its fp32 mean, bit for bit), identical
``W_q``/scale/zero; one 14336x4096 expert matrix took 42.4 s on the whole matrix and 7.0-7.5 s blocked (one
core; /tmp study, Dec 2026), a full-width layer ~3 min instead of ~17.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

from recoverlib.errors import RecoverlibError
from recoverlib.patches import PATCHES, require_attr, version_matches
from recoverlib.quant.backends.base import LinearStorage, QuantBackend, bias_storage
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
            raise RecoverlibError(
                f"plan {plan.name!r}: the hqq backend quantizes linears only; keep embeddings at null"
            )

    def load(self, path: Path, plan: PrecisionPlan, device_map: str | dict | None = None):
        """Read a checkpoint (one file or HF shards) piece by piece onto one device."""

        device = single_device(device_map, self.name)

        with self.session(plan, device):
            return load_model(path, plan, self, device)

    @contextmanager
    def session(self, plan: PrecisionPlan, device: str):
        """hqq's backend is class-wide: the PyTorch reference backend only for a CPU run, restored on exit
        (on a GPU hqq keeps whatever fast backend it or the user chose). On a CPU hqq's optimizer also runs
        in row blocks (patch ``hqq-blocked-optimizer``, the same results), restored on exit."""
        self.require("hqq")
        from hqq.core import optimize as hqq_optimize
        from hqq.core.quantize import HQQBackend, HQQLinear, Quantizer

        saved, saved_opt = HQQLinear.backend, Quantizer.optimize_weights
        if device == "cpu":
            HQQLinear.set_backend(HQQBackend.PYTORCH)
            patch = PATCHES["hqq-blocked-optimizer"]
            # speed only: another hqq version, or an optimizer the user chose, keeps hqq's own (slower) path
            if version_matches(patch.distribution, patch.tested) and saved_opt is getattr(
                    hqq_optimize, "optimize_weights_proximal_legacy", None):
                step = require_attr(patch.name, hqq_optimize, "optimize_weights_proximal_legacy_step")
                Quantizer.optimize_weights = blocked_proximal(saved_opt, step)
        try:
            yield
        finally:
            HQQLinear.set_backend(saved)
            Quantizer.optimize_weights = saved_opt

    def quantize_linear(self, linear, prec: GroupPrecision, plan: PrecisionPlan, device: str):
        import torch
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

        cfg = BaseQuantizeConfig(nbits=prec.bits, group_size=prec.group_size, axis=1)
        return HQQLinear(
            linear, cfg, compute_dtype=getattr(torch, plan.compute_dtype), device=device, del_orig=True
        )

    def linear_state(self, module) -> dict:
        module.encoded_state_dict = True
        return module.state_dict()

    def load_linear(
        self, state: dict, shape: tuple[int, int], prec: GroupPrecision, plan: PrecisionPlan, device: str
    ):
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
        bias = bias_storage(module)  # hqq keeps a bias (Qwen2's q/k/v) in the compute dtype
        nbytes = _nbytes(module.W_q) + _nbytes(meta["scale"]) + _nbytes(meta["zero"]) + bias[1]
        bits, group = int(meta["nbits"]), int(meta["group_size"])
        return LinearStorage(
            bits,
            group,
            math.prod(meta["shape"]) + bias[0],
            nbytes,
            f"hqq/{str(module.W_q.dtype).removeprefix('torch.')}",
        )

    def linear_bytes(
        self, out_features: int, in_features: int, prec: GroupPrecision, compute_dtype: str
    ) -> int:
        groups = out_features * in_features // prec.group_size
        per_word, word_bytes = PACKING[prec.bits]
        payload = math.ceil(groups / per_word) * prec.group_size * word_bytes
        return payload + 2 * groups * DTYPE_BYTES[compute_dtype]  # + one scale and one zero per group


BLOCK_ELEMENTS = 1 << 18  # fp32 elements per row block (1 MiB: about one core's L2)


def blocked_proximal(legacy, step):
    """hqq 0.2.8.post1's ``optimize_weights_proximal_legacy`` with its loop over row blocks: the same step
    function, iterations and whole-matrix early stop, so W_q/scale/zero are bit-identical, without a full-size
    temporary per op. ``legacy`` serves what this does not (another axis, a GPU tensor)."""
    import torch

    default = {"lp_norm": 0.7, "beta": 1e1, "kappa": 1.01, "iters": 20}  # legacy's own defaults

    @torch.inference_mode()
    def optimize(tensor, scale, zero, min_max, axis=0, device=None, opt_params=None, verbose=False):
        opt_params = opt_params or default
        if (
            axis != 1
            or tensor.device.type != "cpu"
            or (device is not None and torch.device(device).type != "cpu")
        ):
            return legacy(tensor, scale, zero, min_max, axis, device, opt_params, verbose)
        lp_norm, beta, iters = opt_params["lp_norm"], opt_params["beta"], opt_params["iters"]
        w_f, scale, zero = tensor.float(), scale.float(), zero.float()
        rows = max(1, BLOCK_ELEMENTS // w_f.shape[1])
        blocks = [slice(s, s + rows) for s in range(0, w_f.shape[0], rows)]
        # |W_f - W_r| filled block by block: its mean is legacy's error, bit for bit
        abs_err = torch.empty_like(w_f)
        best_error = math.inf
        for _ in range(iters):
            new_zero = torch.empty_like(zero)
            for b in blocks:  # with axis=1 each row is one group: per-row math, as on the whole matrix
                w_r, _, new_zero[b], _ = step(w_f[b], scale[b], zero[b], min_max, beta, lp_norm, axis)
                torch.sub(w_f[b], w_r, out=abs_err[b]).abs_()
            zero = new_zero  # as in legacy, the stopping iteration's zero is kept
            current_error = float(abs_err.mean())
            if current_error < best_error:
                best_error = current_error
            else:
                break
        w_q = torch.empty_like(w_f)
        for b in blocks:
            torch.round(w_f[b] * scale[b] + zero[b], out=w_q[b]).clamp_(min_max[0], min_max[1])
        return w_q, scale, zero

    return optimize


def _nbytes(t) -> int:
    return t.numel() * t.element_size()
