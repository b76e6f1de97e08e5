import json

import pytest

from recoverlib.errors import RecoverlibError
from recoverlib.quant.plan import GROUPS, PRESETS, GroupPrecision, PrecisionPlan, load_plan

REQUIRED = ["bnb-nf4", "bnb-int8", "hqq-4", "hqq-attn4-exp2", "hqq-attn4-exp3", "gptq-4", "gptq-attn8-exp4"]


def test_required_presets_and_router_twins():
    for name in REQUIRED:
        plan, routed = PRESETS[name], PRESETS[name + "+router"]
        assert not plan.router.quantized, name
        assert routed.router.quantized and routed.router == routed.attention, name
        assert routed.experts == plan.experts and routed.attention == plan.attention
        assert not plan.lm_head.quantized and not plan.embeddings.quantized


def test_preset_precisions():
    assert PRESETS["hqq-4"].experts == GroupPrecision(4, 64)
    assert PRESETS["hqq-attn4-exp2"].attention == GroupPrecision(4, 64)
    assert PRESETS["hqq-attn4-exp2"].experts == GroupPrecision(2, 16)
    assert PRESETS["gptq-4"].experts == GroupPrecision(4, 128)
    assert PRESETS["gptq-attn8-exp4"].attention == GroupPrecision(8, 128)


def test_plan_file_round_trip(tmp_path):
    plan = PRESETS["hqq-attn4-exp3+router"]
    path = tmp_path / "my-plan.json"
    path.write_text(json.dumps(plan.to_dict()))
    again = load_plan(path)
    assert again == plan and again.name == plan.name
    assert set(plan.to_dict()) >= set(GROUPS)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"backend": "hqq", "experts": {"bits": 5, "group_size": 64}}, "bits must be"),
        ({"backend": "hqq", "experts": {"bits": 4, "group_size": 48}}, "group_size must be"),
        ({"backend": "hqq", "router": {"bits": None, "group_size": 64}}, "unquantized"),
        ({"backend": "hqq", "expert": {"bits": 4}}, "unknown key"),
        ({"experts": {"bits": 4, "group_size": 64}}, "missing 'backend'"),
    ],
)
def test_bad_plans_fail_in_one_line(data, message):
    with pytest.raises(RecoverlibError, match=message) as err:
        PrecisionPlan.from_dict(data)
    assert "\n" not in str(err.value)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(RecoverlibError, match="unknown plan 'hqq-5'"):
        load_plan("hqq-5")
    with pytest.raises(RecoverlibError, match="no such file"):
        load_plan(tmp_path / "nope.json")


def test_backend_validation_rejects_unrealisable_plans():
    from recoverlib.quant.backends import get_backend

    with pytest.raises(RecoverlibError, match="one bit width"):
        get_backend("bnb").validate(
            PrecisionPlan("bnb", attention=GroupPrecision(8), experts=GroupPrecision(4, 64))
        )
    with pytest.raises(RecoverlibError, match="group_size"):
        get_backend("bnb").validate(PrecisionPlan("bnb", experts=GroupPrecision(4, 128)))
    with pytest.raises(RecoverlibError, match="embeddings"):
        get_backend("hqq").validate(PrecisionPlan("hqq", embeddings=GroupPrecision(4, 64)))
    with pytest.raises(RecoverlibError, match="unknown quantization backend 'awq'"):
        get_backend("awq")
