"""recoverlib's own GPTQ column order (plan ``order``): every order writes static groups that vLLM serves,
``static-groups`` with the act-order flag dropped after checking the written g_idx."""

from __future__ import annotations

import json

import pytest

from recoverlib.errors import RecoverlibError
from recoverlib.quant.plan import PRESETS, PrecisionPlan

GPTQ_4 = PRESETS["gptq-4"].to_dict()


def test_order_is_read_written_and_checked():
    plan = PrecisionPlan.from_dict({**GPTQ_4, "order": "static-groups"})
    assert plan.order == "static-groups" and PrecisionPlan.from_dict(plan.to_dict()) == plan
    assert "order" not in PRESETS["gptq-4"].to_dict()  # the default keeps old metadata as it was
    assert PRESETS["gptq-4"].order == "group-aware"
    with pytest.raises(RecoverlibError, match="order is GPTQ's column order"):
        PrecisionPlan.from_dict({**PRESETS["hqq-4"].to_dict(), "order": "none"})
    with pytest.raises(RecoverlibError, match="one of group-aware, none, static-groups"):
        PrecisionPlan.from_dict({**GPTQ_4, "order": "desc-act"})


@pytest.mark.slow
@pytest.mark.parametrize("order", ["none", "static-groups"])
def test_each_order_writes_static_groups_vllm_reads(order, base, tmp_path):
    from recoverlib.engines.vllm_support import weights_problem
    from recoverlib.quant.api import load_quantized, quantize
    from recoverlib.quant.checkpoint import Checkpoint
    from recoverlib.quant.formats import ServedWeights, gidx_kind

    plan = PrecisionPlan.from_dict({**GPTQ_4, "order": order, "name": f"gptq-4-{order}"})
    out = quantize(base, plan, tmp_path / order, progress=False)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["desc_act"] is False and qc["meta"]["static_groups"] == (order == "static-groups")
    assert qc["meta"]["act_group_aware"] is False
    assert gidx_kind(Checkpoint.open(out), 128) == "static"
    assert weights_problem(ServedWeights.from_folder(out)) is None
    assert load_quantized(out) is not None  # audited against its plan
