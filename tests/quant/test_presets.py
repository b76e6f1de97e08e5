"""Every preset on the tiny Mixtral: audited precision per group, planner == audit bytes, exact reload,
bounded logits error vs bf16, router quantized only by ``+router`` plans."""

import pytest

from recoverlib.model_folder import read_config
from recoverlib.quant.api import load_quantized
from recoverlib.quant.compare import logits_error, router_agreement
from recoverlib.quant.plan import GROUPS, PRESETS, GroupPrecision, plan_for_model
from recoverlib.quant.planner import plan_bytes

from .conftest import ERROR_BOUND

FAST_GPTQ = {"gptq-attn8-exp4"}  # one GPTQ preset in the default run; the rest take ~20 s each


def _params():
    for name in PRESETS:
        marks = [pytest.mark.slow] if name.startswith("gptq") and name not in FAST_GPTQ else []
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("preset", _params())
def test_preset(preset, quantized, base, ref_model, input_ids):
    import torch

    plan = plan_for_model(preset, read_config(base))  # the preset's feed-forward precision on the experts
    assert plan.mlp == GroupPrecision() and plan.experts == PRESETS[preset].experts
    q = quantized(preset)
    assert q.report.plan_dict == plan.to_dict()  # the checkpoint records the plan it was given, fitted
    for report in (q.report, _audit_of_the_loaded_model(q, plan)):
        assert "mlp" not in report.groups  # a Mixtral has none
        assert set(report.groups) == set(GROUPS) - {"mlp"}
        for g in report.groups:
            want = plan.group(g)
            got = report.groups[g]
            assert got.bits == (want.bits if want.quantized else 16), (g, got.label())
            assert got.group_size == want.group_size, (g, got.label())
            assert got.quantized == {want.quantized}, g
        assert report.total_bytes == plan_bytes(base, plan).total_bytes
    assert q.report.planned_bytes == q.report.total_bytes
    assert report.groups["router"].quantized == {preset.endswith("+router")}

    with torch.no_grad():
        again = load_quantized(q.out)
        assert torch.equal(again(input_ids).logits, q.reloaded(input_ids).logits), "two loads differ"

    err = logits_error(ref_model, q.reloaded, input_ids)
    routing = router_agreement(ref_model, q.reloaded, input_ids)
    lowest = min(p.bits for p in plan.groups().values() if p.quantized)
    print(
        f"\n{preset}: {q.report.effective_bits:.3f} bits/param, {q.report.total_bytes:,} B, "
        f"rel. logits error {err['rel_error']:.4f}, top-1 {err['top1']:.3f}, router top-2 "
        f"{routing['mean']:.3f}"
    )
    assert err["rel_error"] < ERROR_BOUND[lowest]
    assert routing["mean"] > 0.8


def _audit_of_the_loaded_model(q, plan):
    from recoverlib.quant.audit import audit_model

    return audit_model(q.reloaded, plan)
