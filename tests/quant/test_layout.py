"""GPTQ checkpoints in Mixtral's published layout: tensor names and config as vLLM 0.32's Mixtral loader reads
them, the conversion of GPTQModel's layout, and both layouts read alike by recoverlib's own loader."""

import json
import re

import pytest
from safetensors import safe_open

from recoverlib.errors import RecoverlibError
from recoverlib.quant.checkpoint import expert_layout, memory_name, rewrite_names
from recoverlib.quant.convert import publish_layout

GPTQ_PARTS = r"(qweight|qzeros|scales|g_idx)"
# vllm/model_executor/models/mixtral.py: self_attn.{q,k,v}_proj stacked into qkv_proj, o_proj;
# block_sparse_moe.gate (GateLinear, never quantized); block_sparse_moe.experts.N.{w1,w2,w3} (FusedMoE
# mapping).
VLLM_NAMES = [
    r"model\.embed_tokens\.weight", r"model\.norm\.weight", r"lm_head\.weight",
    r"model\.layers\.\d+\.(input|post_attention)_layernorm\.weight",
    rf"model\.layers\.\d+\.self_attn\.[qkvo]_proj\.{GPTQ_PARTS}",
    r"model\.layers\.\d+\.block_sparse_moe\.gate\.weight",
    rf"model\.layers\.\d+\.block_sparse_moe\.experts\.\d+\.w[123]\.{GPTQ_PARTS}",
]


def _names(folder):
    with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
        return list(fh.keys())


@pytest.fixture(scope="module")
def written(quantized):
    return quantized("gptq-attn8-exp4").out


@pytest.fixture(scope="module")
def old_layout(written, tmp_path_factory):
    """The same checkpoint as GPTQModel (and recoverlib before) wrote it: mlp.experts.N.gate_proj names."""
    out = tmp_path_factory.mktemp("old") / "gptq"
    rewrite_names(written, out, memory_name)
    return out


def test_quantize_writes_the_names_vllm_reads(written):
    names = _names(written)
    unknown = [n for n in names if not any(re.fullmatch(p, n) for p in VLLM_NAMES)]
    assert not unknown, unknown[:5]
    assert not [n for n in names if ".mlp." in n] and expert_layout(names) == "published"
    for layer in range(2):
        for e in range(4):
            for w in ("w1", "w2", "w3"):
                assert f"model.layers.{layer}.block_sparse_moe.experts.{e}.{w}.qweight" in names


def test_config_as_vllm_reads_it(written):
    qc = json.loads((written / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["bits"] == 4 and qc["group_size"] == 128
    assert qc["desc_act"] is False and qc["sym"] is True and qc["lm_head"] is False
    assert "offload_to_disk_path" not in qc.get("meta", {})  # the finished run's scratch folder is gone
    # vLLM's get_dynamic_override: re.match of each rule against the layer prefix, first match wins
    rules = qc["dynamic"]
    attn = [
        v for k, v in rules.items() if re.match(k.removeprefix("+:"), "model.layers.0.self_attn.qkv_proj")
    ]
    assert attn and attn[0]["bits"] == 8
    assert not any(re.match(k[2:], "model.layers.0.block_sparse_moe.experts") for k in rules)


def test_convert_gives_the_bytes_quantize_writes(written, old_layout, tmp_path):
    assert expert_layout(_names(old_layout)) == "split"
    out = publish_layout(old_layout, tmp_path / "new")
    assert (out / "model.safetensors").read_bytes() == (written / "model.safetensors").read_bytes()
    assert json.loads((out / "recoverlib_quant.json").read_text()) == json.loads(
        (written / "recoverlib_quant.json").read_text()
    )
    with pytest.raises(RecoverlibError, match="already uses Mixtral's published layout"):
        publish_layout(written, tmp_path / "again")


def test_convert_refuses_what_it_cannot_serve(quantized, base, tmp_path):
    with pytest.raises(RecoverlibError, match="convert takes a GPTQ, AWQ or .*hqq.*--engine hf"):
        publish_layout(quantized("hqq-4").out, tmp_path / "x")
    with pytest.raises(RecoverlibError, match="16-bit"):
        publish_layout(base, tmp_path / "y")


def test_both_layouts_load_alike(written, old_layout, input_ids):
    import torch

    from recoverlib.quant.api import inspect_checkpoint, load_quantized

    with torch.no_grad():
        assert torch.equal(
            load_quantized(written)(input_ids).logits, load_quantized(old_layout)(input_ids).logits
        )
    assert inspect_checkpoint(old_layout).total_bytes == inspect_checkpoint(written).total_bytes


@pytest.mark.slow
def test_vllm_parses_config_and_expert_names(written):
    """Imports vLLM (about 12 s): its GPTQ config parser and its FusedMoE expert mapping for w1/w2/w3."""
    pytest.importorskip("vllm")
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts
    from vllm.model_executor.layers.quantization import get_quantization_config
    from vllm.model_executor.layers.quantization.utils.gptq_utils import get_dynamic_override

    qc = json.loads((written / "config.json").read_text())["quantization_config"]
    config = get_quantization_config(qc["quant_method"]).from_config(qc)
    assert get_dynamic_override(config, "model.layers.0.self_attn.qkv_proj", "bits", 4) == 8
    assert get_dynamic_override(config, "model.layers.0.block_sparse_moe.experts", "bits", 4) == 4
    mapping = RoutedExperts.build_expert_params_mapping("w1", "w2", "w3", num_experts=4)
    names = _names(written)
    for _, weight_name, expert, _ in mapping:
        assert any(f"block_sparse_moe.{weight_name}qweight" in n for n in names), (weight_name, expert)
