"""Whether vLLM can serve a checkpoint here: the pure rule over (checkpoint, machine), and the machine
probe."""

from __future__ import annotations

import json
import re

import pytest

from recoverlib.engines.vllm_support import (
    ServedWeights,
    VllmKernels,
    choose_engine,
    gptq_group_bits,
    kernel_problem,
    vllm_problem,
)
from recoverlib.quant.backends.gptq import dynamic_rules
from recoverlib.quant.plan import plan_for_model
from recoverlib.quant.planner import MIXTRAL_8X7B

GPU = VllmKernels("cuda", "NVIDIA T4")
AMX = VllmKernels("cpu", "Intel Xeon", ("avx2", "avx512f", "avx512_bf16", "amx_tile"), True, True)
ZEN4 = VllmKernels("cpu", "AMD EPYC", ("avx2", "avx512f", "avx512_bf16"), True, False)
AVX2 = VllmKernels("cpu", "AMD EPYC", ("avx2",), False, False)


def gptq(**bits) -> ServedWeights:
    return ServedWeights("Q", "gptq", bits, "published")


@pytest.mark.parametrize(("weights", "kernels", "want"), [
    (ServedWeights("M"), AVX2, None),  # 16-bit: any vLLM
    (gptq(attention=4, experts=4), AMX, None),
    (gptq(attention=4, experts=4), GPU, None),
    (gptq(attention=4, experts=4), ZEN4, "int4 MoE kernel on CPU needs AMX, .*AMD EPYC, avx2, avx512f, "
                                         "avx512_bf16"),
    (gptq(attention=4, experts=4), AVX2, "int4 linear kernel on CPU needs AVX-512 .*AMD EPYC, "
                                         "avx2.*--engine hf"),
    (gptq(attention=4), ZEN4, None),  # experts 16-bit: only the int4 GEMM is needed
    (gptq(experts=4), AVX2, "int4 MoE kernel"),
    (gptq(attention=8, experts=4), AMX, "take 4-bit weights only \\(attention is 8-bit\\).*or a GPU"),
    (gptq(attention=8, experts=4), GPU, None),
    (gptq(attention=4, experts=4, router=4), GPU, "quantized router; vLLM's Mixtral router is always 16-bit"),
    (ServedWeights("Q", "gptq", {"attention": 4}, "split"), GPU, "recoverlib convert --model Q --out NEW"),
    (ServedWeights("Q", "bnb", {"attention": 4}, None), GPU, "bnb checkpoint: vLLM 0.32 has no "
                                                             "bitsandbytes.*--engine hf"),
    (ServedWeights("Q", "hqq", {"attention": 4}, None), AMX, "no HQQ.*--engine hf"),
])
def test_the_rule(weights, kernels, want):
    problem = vllm_problem(weights, kernels)
    if want is None:
        assert problem is None
    else:
        assert problem is not None and re.search(want, problem), problem


@pytest.mark.parametrize("preset", ["gptq-4", "gptq-attn8-exp4"])
def test_group_bits_read_back_from_the_dynamic_rules_recoverlib_writes(preset):
    plan = plan_for_model(preset, MIXTRAL_8X7B)
    base, rules = dynamic_rules(plan)
    qc = {"quant_method": "gptq", "bits": base.bits, "group_size": base.group_size, "dynamic": rules}
    assert gptq_group_bits(qc) == {g: p.bits for g, p in plan.groups().items() if p.quantized}
    assert ServedWeights.from_plan(plan, "p").bits == gptq_group_bits(qc)



def test_a_published_gptq_config_without_dynamic_rules():
    assert gptq_group_bits({"quant_method": "gptq", "bits": 4}) == {"attention": 4, "experts": 4}
    assert gptq_group_bits({"bits": 4, "lm_head": True, "dynamic": {"-:.*experts.*": {}}}) == {
        "attention": 4,
        "lm_head": 4,
    }


def test_a_config_claiming_gptq_is_read_from_its_folder(fake_quantized):
    weights = ServedWeights.from_folder(fake_quantized)
    assert weights.method == "gptq" and weights.bits == {"attention": 4, "experts": 4}
    assert weights.layout == "published"  # the tiny model's tensors carry Mixtral's published names
    assert kernel_problem(weights, GPU) is None


def test_auto_picks_hf_for_a_base_vllm_cannot_serve_and_says_so(tiny_model, tmp_path, caplog):
    pytest.importorskip("vllm")
    import shutil

    bnb = shutil.copytree(tiny_model, tmp_path / "bnb")
    cfg = json.loads((bnb / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (bnb / "config.json").write_text(json.dumps(cfg))
    assert choose_engine("auto", [tiny_model]) == "vllm"
    assert choose_engine("auto", [tiny_model, bnb]) == "hf"
    assert "engine auto -> hf, since" in caplog.text and "bitsandbytes" in caplog.text
    assert choose_engine("hf", [bnb]) == "hf"


@pytest.mark.slow
def test_probe_asks_vllm_about_this_cpu():
    """The probe's answers follow from this CPU's features as vLLM 0.32's own kernels need them (imports
    vLLM)."""
    pytest.importorskip("vllm")
    from recoverlib.engines.vllm_support import cpu_identity, probe_vllm_kernels

    kernels = probe_vllm_kernels()
    if kernels.platform != "cpu":
        pytest.skip("not a CPU machine")
    _, features = cpu_identity()
    assert kernels.cpu_features == features
    assert kernels.int4_linear == ("avx512f" in features)  # cpu_gemm_wna16 is in the AVX-512 builds only
    if "amx_tile" in features:
        assert kernels.int4_moe
    print(kernels.describe())


def published(method="gptq", bits=4, **kw) -> ServedWeights:
    groups = kw.pop("groups", ("attention",))
    return ServedWeights("P", method, {g: bits for g in groups}, "published", **{"group_size": 32, **kw})


@pytest.mark.parametrize(("weights", "want"), [
    (published(), None),
    (published(desc_act=True, g_idx="permuted"),
     "act-order gptq \\(desc_act=true, g32, its g_idx permute.*no act-order groups on any device.*--engine hf"
     ".*re-quantize"),
    (published(desc_act=True, g_idx="static"),
     "marked act-order.*static groups.*recoverlib convert --model P"),
    (published(desc_act=True, group_size=-1), None),  # one group per row: vLLM drops the flag itself
    (published(sym=False), "asymmetric \\(sym=false\\) GPTQ: vLLM 0.32 reads 4- or 8-bit symmetric"),
    (published(bits=3), "3-bit GPTQ"),
    (published(config_file="quantize_config.json"), "only in quantize_config.json.*recoverlib convert"),
    (published(rule_bits={"attention": 4, "experts": 4}), "do not skip vLLM's prefix.*recoverlib convert"),
    (published("awq", version="gemv"), "AutoAWQ's 4-bit GEMM layout only"),
    (published("awq", version="gemm"), None),
    (published("compressed-tensors", desc_act=True, g_idx="permuted"), "actorder=group"),
    (published("compressed-tensors", hf_proj_names=True), "gate_proj.*w1/w3/w2.*recoverlib convert"),
    (published("compressed-tensors", groups=("attention", "experts")), None),  # on a GPU
])
def test_published_formats_on_any_device(weights, want):
    problem = vllm_problem(weights, GPU)
    if want is None:
        assert problem is None
    else:
        assert problem is not None and re.search(want, problem) and "\n" not in problem, problem


@pytest.mark.parametrize(("weights", "kernels", "want"), [
    (published("awq"), ZEN4, None),
    (published("compressed-tensors"), AVX2, "int4 linear kernel on CPU needs AVX-512"),
    (published("compressed-tensors", groups=("attention", "experts")), ZEN4,
     "int4 MoE kernel on CPU needs AMX"),
    (published(bits=8), ZEN4, "CPU gptq kernels take 4-bit weights only \\(attention is 8-bit\\)"),
    (published(bits=8), GPU, None),
])
def test_published_formats_on_cpus(weights, kernels, want):
    problem = vllm_problem(weights, kernels)
    assert (problem is None) if want is None else bool(re.search(want, problem or "")), problem


def test_a_dense_gptq_config_quantizes_the_mlp_not_experts():
    """A dense model's GPTQ config read as vLLM reads it: its MLP, no experts (which would ask for the MoE
    kernel) and no skip rule for experts it does not have."""
    assert gptq_group_bits({"quant_method": "gptq", "bits": 4}, moe=False) == {"attention": 4, "mlp": 4}
    assert gptq_group_bits({"bits": 4, "dynamic": {"-:.*mlp.*": {}}}, moe=False) == {"attention": 4}
