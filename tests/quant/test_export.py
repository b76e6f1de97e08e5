"""GPTQ export for vLLM: tensor names and config as vLLM 0.32's Mixtral loader reads them (no serving on CPU)."""

import json
import re

import pytest
from safetensors import safe_open

from recoverlib.errors import RecoverlibError
from recoverlib.quant.export import export_vllm

GPTQ_PARTS = r"(qweight|qzeros|scales|g_idx)"
# vllm/model_executor/models/mixtral.py: self_attn.{q,k,v}_proj stacked into qkv_proj, o_proj;
# block_sparse_moe.gate (GateLinear, never quantized); block_sparse_moe.experts.N.{w1,w2,w3} (FusedMoE mapping).
VLLM_NAMES = [
    r"model\.embed_tokens\.weight", r"model\.norm\.weight", r"lm_head\.weight",
    r"model\.layers\.\d+\.(input|post_attention)_layernorm\.weight",
    rf"model\.layers\.\d+\.self_attn\.[qkvo]_proj\.{GPTQ_PARTS}",
    r"model\.layers\.\d+\.block_sparse_moe\.gate\.weight",
    rf"model\.layers\.\d+\.block_sparse_moe\.experts\.\d+\.w[123]\.{GPTQ_PARTS}",
]


@pytest.fixture(scope="module")
def exported(quantized, tmp_path_factory):
    return export_vllm(quantized("gptq-attn8-exp4").out, tmp_path_factory.mktemp("vllm") / "gptq")


def test_names_match_vllm_mixtral(exported):
    with safe_open(str(exported / "model.safetensors"), framework="pt") as fh:
        names = list(fh.keys())
    unknown = [n for n in names if not any(re.fullmatch(p, n) for p in VLLM_NAMES)]
    assert not unknown, unknown[:5]
    assert not [n for n in names if ".mlp." in n]
    for layer in range(2):
        for e in range(4):
            for w in ("w1", "w2", "w3"):
                assert f"model.layers.{layer}.block_sparse_moe.experts.{e}.{w}.qweight" in names


def test_config_as_vllm_reads_it(exported):
    qc = json.loads((exported / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["bits"] == 4 and qc["group_size"] == 128
    assert qc["desc_act"] is False and qc["sym"] is True and qc["lm_head"] is False
    # vLLM's get_dynamic_override: re.match of each rule against the layer prefix, first match wins
    rules = qc["dynamic"]
    attn = [v for k, v in rules.items() if re.match(k.removeprefix("+:"), "model.layers.0.self_attn.qkv_proj")]
    assert attn and attn[0]["bits"] == 8
    assert not any(re.match(k[2:], "model.layers.0.block_sparse_moe.experts") for k in rules)


def test_refusals(quantized, tmp_path):
    import shutil

    with pytest.raises(RecoverlibError, match="needs a checkpoint made with a gptq"):
        export_vllm(quantized("hqq-4").out, tmp_path / "x")
    routed = shutil.copytree(quantized("gptq-attn8-exp4").out, tmp_path / "routed")
    meta = json.loads((routed / "recoverlib_quant.json").read_text())
    meta["plan"]["router"] = {"bits": 8, "group_size": 128}
    (routed / "recoverlib_quant.json").write_text(json.dumps(meta))
    with pytest.raises(RecoverlibError, match="router is always 16-bit"):
        export_vllm(routed, tmp_path / "y")


@pytest.mark.slow
def test_vllm_parses_config_and_expert_names(exported):
    """Imports vLLM (about 12 s): its GPTQ config parser and its FusedMoE expert mapping for w1/w2/w3."""
    pytest.importorskip("vllm")
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts
    from vllm.model_executor.layers.quantization import get_quantization_config
    from vllm.model_executor.layers.quantization.utils.gptq_utils import get_dynamic_override

    qc = json.loads((exported / "config.json").read_text())["quantization_config"]
    config = get_quantization_config(qc["quant_method"]).from_config(qc)
    assert get_dynamic_override(config, "model.layers.0.self_attn.qkv_proj", "bits", 4) == 8
    assert get_dynamic_override(config, "model.layers.0.block_sparse_moe.experts", "bits", 4) == 4
    mapping = RoutedExperts.build_expert_params_mapping("w1", "w2", "w3", num_experts=4)
    with safe_open(str(exported / "model.safetensors"), framework="pt") as fh:
        names = list(fh.keys())
    for _, weight_name, expert, _ in mapping:
        assert any(f"block_sparse_moe.{weight_name}qweight" in n for n in names), (weight_name, expert)
