"""The audit catches what quantizers do silently: experts left 16-bit, a router quantized against the plan."""

import pytest

from recoverlib.errors import RecoverlibError
from recoverlib.quant.audit import audit_model, check_plan
from recoverlib.quant.plan import PRESETS


def test_plain_model_is_all_16_bit(ref_model):
    report = audit_model(ref_model)
    assert all(g.bits == 16 and g.quantized == {False} for g in report.groups.values())
    assert report.total_bytes == 2 * report.total_params and report.effective_bits == 16.0
    experts = report.groups["experts"]
    assert experts.params == 2 * 4 * 3 * 128 * 256  # layers x experts x (w1, w2, w3) x hidden x intermediate


def test_transformers_bnb_leaves_fused_experts_16_bit(base):
    """Plain transformers 5 + bitsandbytes quantizes attention only; the audit names the experts."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    cfg = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=["gate", "lm_head"],
    )
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16, quantization_config=cfg)
    report = audit_model(model)
    assert report.groups["attention"].bits == 4 and report.groups["experts"].bits == 16
    with pytest.raises(RecoverlibError, match=r"^experts: planned 4-bit g64 but realised 16-bit") as err:
        check_plan(report, PRESETS["bnb-nf4"])
    assert "\n" not in str(err.value)


def test_router_quantized_against_the_plan_raises(quantized):
    q = quantized("hqq-4+router")
    check_plan(q.report, PRESETS["hqq-4+router"])
    with pytest.raises(RecoverlibError, match=r"^router: planned 16-bit but realised 4-bit g64"):
        check_plan(q.report, PRESETS["hqq-4"])


def test_wrong_bits_and_json_shape(quantized):
    q = quantized("hqq-attn4-exp2")
    with pytest.raises(RecoverlibError, match=r"^experts: planned 3-bit g128 but realised 2-bit g16"):
        check_plan(q.report, PRESETS["hqq-attn4-exp3"])
    data = q.report.to_json()
    assert set(data["groups"]) == {"attention", "experts", "router", "lm_head", "embeddings"}
    for g in data["groups"].values():
        assert set(g) >= {"bits", "group_size", "params", "bytes"}
    assert data["groups"]["experts"] | {"dtype": None} == {
        "bits": 2,
        "group_size": 16,
        "params": 786432,
        "bytes": data["groups"]["experts"]["bytes"],
        "dtype": None,
    }
    assert data["total_bytes"] == data["planned_bytes"]
    assert data["effective_bits"] == pytest.approx(8 * data["total_bytes"] / data["total_params"], abs=1e-4)


def test_plain_checkpoint_audited_from_headers_equals_the_loaded_model(base, ref_model):
    from recoverlib.quant.api import inspect_checkpoint

    assert inspect_checkpoint(base).to_json() == audit_model(ref_model).to_json()
