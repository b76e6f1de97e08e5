"""hqq's optimizer in row blocks on a CPU (patch hqq-blocked-optimizer): the same quantized weights as hqq's
own whole-matrix path, bit for bit, and hqq's state restored after the session."""

from __future__ import annotations

import pytest

from recoverlib.quant.backends.hqq import BLOCK_ELEMENTS, HqqBackend
from recoverlib.quant.plan import GroupPrecision, PrecisionPlan

pytest.importorskip("hqq")


def _quantize(linear, prec: GroupPrecision, blocked: bool):
    import torch
    from hqq.core.quantize import BaseQuantizeConfig, HQQBackend, HQQLinear

    plan = PrecisionPlan("hqq", attention=prec, experts=prec)
    if blocked:
        with HqqBackend().session(plan, "cpu"):
            return HqqBackend().quantize_linear(linear, prec, plan, "cpu")
    HQQLinear.set_backend(HQQBackend.PYTORCH)
    cfg = BaseQuantizeConfig(nbits=prec.bits, group_size=prec.group_size, axis=1)
    return HQQLinear(linear, cfg, compute_dtype=torch.bfloat16, device="cpu", del_orig=False)


@pytest.mark.parametrize(("out_f", "in_f", "prec"), [
    (768, 1024, GroupPrecision(4, 64)),  # several row blocks, the last one partial
    (600, 512, GroupPrecision(2, 16)),  # 2-bit stops early: the stop decision must be the same
    (770, 384, GroupPrecision(3, 128)),
])
def test_blocked_optimizer_equals_hqqs_own_path(out_f, in_f, prec):
    import torch
    from hqq.core.quantize import Quantizer

    assert out_f * in_f > BLOCK_ELEMENTS  # more than one row block
    weight = (torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(out_f)) * 0.02).to(
        torch.bfloat16
    )
    linears = [torch.nn.Linear(in_f, out_f, bias=False, dtype=torch.bfloat16) for _ in range(2)]
    for lin in linears:
        lin.weight.data.copy_(weight)
    before = Quantizer.optimize_weights
    ours, theirs = _quantize(linears[0], prec, True), _quantize(linears[1], prec, False)
    assert Quantizer.optimize_weights is before  # the session put hqq's optimizer back
    assert torch.equal(ours.W_q, theirs.W_q)
    for key in ("scale", "zero"):
        assert torch.equal(ours.meta[key], theirs.meta[key]), key
