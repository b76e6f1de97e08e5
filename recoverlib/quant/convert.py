"""Rewrite a published quantized checkpoint into the layout vLLM 0.32 reads, without changing a weight.

What it rewrites (each found by :func:`recoverlib.quant.formats.exact_rewrites` on the real files):

- GPTQModel's expert names: GPTQModel (and recoverlib before this layout) writes experts as
  ``mlp.experts.N.gate_proj/up_proj/down_proj`` and the router as ``mlp.gate``; vLLM 0.32's Mixtral loader
  reads only ``block_sparse_moe.*`` (``There is no module or parameter named 'layers.0.mlp'``). Tensors are
  renamed shard by shard (one shard in memory at a time), every byte kept.
- A quantization config only in ``quantize_config.json`` (AutoGPTQ's layout) or ``quant_config.json``: vLLM
  reads ``config.json``'s ``quantization_config`` only; it is copied there.
- Experts named ``block_sparse_moe.experts.N.gate_proj`` (llm-compressor's): vLLM's Mixtral matches a
  compressed-tensors ``ignore`` list against ``w1/w3/w2`` and transformers 5 converts only ``w1/w2/w3``; the
  tensors and the ``ignore`` entries are renamed.
- 16-bit experts that GPTQ's ``dynamic`` rules do not skip for vLLM (a rule such as ``-:.*\\.experts\\..*``
  matches GPTQModel's ``mlp.experts.0.gate_proj`` but not vLLM's ``block_sparse_moe.experts`` prefix, so vLLM
  builds quantized experts and finds no int4 tensors): a first rule skipping that prefix is added.
- An act-order flag over static groups: vLLM 0.32 refuses ``desc_act=true`` with groups; when every ``g_idx``
  tensor is ``i // group_size`` (GPTQModel's ``static_groups``, or a layer narrower than one group) the
  flag changes nothing and is dropped. A real permutation (``g_idx`` not contiguous) cannot be undone without
  permuting the activations, so such a checkpoint is refused with what a re-quantize from the 16-bit model
  costs.

Config, tokenizer and ``recoverlib_quant.json`` are copied.
"""

from __future__ import annotations

import json
from pathlib import Path

from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import read_json_object, read_model_config
from recoverlib.quant.checkpoint import disk_name, rewrite_names
from recoverlib.quant.formats import PACKED_TENSOR, ServedWeights, exact_rewrites, write_quant_config
from recoverlib.quant.plan import PRESETS
from recoverlib.quant.planner import MIXTRAL_8X7B, ModelShapes, quantize_peak

# benchmarks/results/quant_scale_gptq.md: recoverlib quantize --plan gptq-4 of one full-width Mixtral-8x7B
# layer on 2 AMD EPYC cores, start-up, load, save and audit included.
GPTQ_SECONDS_PER_FULL_LAYER = 869


def publish_layout(src: str | Path, out: str | Path) -> Path:
    """Write the quantized checkpoint ``src`` to ``out`` in the layout vLLM reads; return ``out``. Raises
    when nothing needs rewriting, or when no exact rewrite exists (a real act-order permutation)."""
    src, out = Path(src), Path(out)
    weights = ServedWeights.from_folder(src)
    if weights.method not in PACKED_TENSOR:
        raise RecoverlibError(
            f"{src}: convert takes a GPTQ, AWQ or compressed-tensors checkpoint (found"
            f" {weights.model_type}, {weights.method or '16-bit'}); bitsandbytes and HQQ checkpoints are"
            " served by --engine hf as they are"
        )
    if weights.desc_act and weights.group_size not in (None, -1) and weights.g_idx != "static":
        raise RecoverlibError(
            f"{src}: act-order with a real permutation (g_idx not i // group_size): no exact rewrite for vLLM"
            f" exists. Serve it with --engine hf, or re-quantize the 16-bit model: {requantize_cost(src)}"
        )
    fixes = exact_rewrites(weights)
    if not fixes:
        raise RecoverlibError(
            f"{src} already uses Mixtral's published layout and its config is where vLLM reads it: vLLM loads"
            " it as it is"
        )
    rename = disk_name if weights.layout == "split" or weights.hf_proj_names else str
    rewrite_names(src, out, rename)
    if weights.config_file not in (None, "config.json"):
        qc = read_json_object(src / weights.config_file)
        qc.setdefault("quant_method", weights.method)  # AutoGPTQ's file names no method
        cfg = read_json_object(out / "config.json")
        (out / "config.json").write_text(json.dumps({**cfg, "quantization_config": qc}, indent=2) + "\n")
    if weights.hf_proj_names and weights.method == "compressed-tensors":
        qc = json.loads((out / "config.json").read_text())["quantization_config"]
        qc["ignore"] = [disk_name(n) for n in qc.get("ignore") or []]  # as the tensors are now named
        write_quant_config(out, qc, "config.json")
    skip_experts = "experts" in set(weights.rule_bits) - set(weights.bits)
    for where in ("config.json", "quantize_config.json"):
        _rewrite_gptq_config(out, where, weights.desc_act and weights.g_idx == "static", skip_experts)
    return out


# vLLM matches GPTQ ``dynamic`` rules against the fused-MoE prefix ``model.layers.N.block_sparse_moe.experts``
SKIP_EXPERTS_RULE = r"-:.*\.experts$"


def _rewrite_gptq_config(folder: Path, where: str, drop_act_order: bool, skip_experts: bool) -> None:
    """In the GPTQ config kept in ``where`` (when the file holds one): ``desc_act: false`` (static groups
    only), and a first ``dynamic`` rule that skips the experts' vLLM prefix (16-bit experts only)."""
    file = folder / where
    if not file.is_file():
        return
    data = read_json_object(file)
    qc = data.get("quantization_config") if where == "config.json" else data
    if not isinstance(qc, dict) or qc.get("quant_method", "gptq") != "gptq":
        return
    if drop_act_order:
        qc = {**qc, "desc_act": False}
    if skip_experts:
        qc = {**qc, "dynamic": {SKIP_EXPERTS_RULE: {}, **(qc.get("dynamic") or {})}}
    write_quant_config(folder, qc, where)


def requantize_cost(path: str | Path) -> str:
    """What ``recoverlib quantize --plan gptq-4`` of this model's 16-bit checkpoint takes here: the planner's
    peak host memory, and time scaled from the measured full-width Mixtral-8x7B layer by parameters."""
    cfg = read_model_config(path)
    try:
        peak = quantize_peak(cfg, PRESETS["gptq-4"]).host_bytes
        shapes, full = ModelShapes.from_config(cfg), ModelShapes.from_config(MIXTRAL_8X7B)
    except RecoverlibError as err:
        return f"recoverlib quantize --plan gptq-4 ({err})"
    per_layer = _layer_params(shapes) / _layer_params(full) * GPTQ_SECONDS_PER_FULL_LAYER
    minutes = shapes.layers * per_layer / 60
    took = f"about {minutes:.0f} min" if minutes >= 1 else "under a minute"
    return (f"`recoverlib quantize --plan gptq-4` peaks at about {peak / 1e9:.1f} GB of RAM (planner) and"
            f" takes {took} on 2 CPU cores (scaled from {GPTQ_SECONDS_PER_FULL_LAYER} s per"
            " full-width Mixtral-8x7B layer measured here)")


def _layer_params(shapes: ModelShapes) -> int:
    one = ModelShapes(**{**shapes.__dict__, "layers": 1})
    return sum(o * i * n for group in one.linears().values() for o, i, n, _ in group)
