"""Quantized checkpoints as they are published, recognised once, from their files.

A folder is read into one :class:`ServedWeights`: the quantization method and what each module group holds,
as the checkpoint's own files say it (recoverlib's ``recoverlib_quant.json``; else ``quantization_config`` in
``config.json``, or ``quantize_config.json`` / ``quant_config.json`` as AutoGPTQ and AutoAWQ wrote them; the
safetensors headers for which modules are really quantized and how the experts are named; GPTQ's ``g_idx``
tensors for what an act-order checkpoint really does). Engines and the vLLM rule
(:mod:`recoverlib.engines.vllm_support`) read this description and never the files.

Formats recognised: GPTQ (GPTQModel, AutoGPTQ: ``qweight/qzeros/scales/g_idx``), AWQ (AutoAWQ's GEMM layout:
``qweight/qzeros/scales``, packed along the output), compressed-tensors (llm-compressor's ``pack-quantized``
W4A16: ``weight_packed/weight_scale``), bitsandbytes and HQQ. Anything else with a ``quant_method`` keeps its
name and is left to the engine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import read_json_object, read_model_config
from recoverlib.module_groups import group_of
from recoverlib.quant.checkpoint import EXPERT_PROJ, Checkpoint, expert_layout
from recoverlib.quant.meta import read_meta

# Where a published checkpoint keeps its quantization config, in the order the libraries look.
CONFIG_FILES = ("config.json", "quantize_config.json", "quant_config.json")
# The tensor that marks a module as quantized, per method.
PACKED_TENSOR = {"gptq": "qweight", "awq": "qweight", "compressed-tensors": "weight_packed"}
# One module of each group in vLLM's names; GPTQ ``dynamic`` rules are matched against these prefixes.
SAMPLE_MODULES = {
    "attention": "model.layers.0.self_attn.qkv_proj",
    "experts": "model.layers.0.block_sparse_moe.experts",
    "router": "model.layers.0.block_sparse_moe.gate",
    "lm_head": "lm_head",
}
# A dense model's in vLLM's names (its feed-forward weights are the ``mlp`` group; no experts, no router).
DENSE_SAMPLE_MODULES = {
    "attention": "model.layers.0.self_attn.qkv_proj",
    "mlp": "model.layers.0.mlp.gate_up_proj",
    "lm_head": "lm_head",
}


@dataclass(frozen=True)
class ServedWeights:
    """What a checkpoint holds, as its files say. ``bits``: group -> bits for the quantized groups (absent:
    16-bit; ``other`` is a dense model's MLP).

    ``group_size``: the config's (-1: one group per row). ``desc_act``: the config asks for activation order
    (GPTQ ``desc_act``, compressed-tensors ``actorder`` group/dynamic). ``g_idx``: what the tensors do when it
    does: ``static`` (every ``g_idx[i] == i // group_size``: the groups are contiguous, the flag changes
    nothing), ``permuted`` (a real activation permutation), None (not asked, or nothing to read).
    ``config_file``: where the quantization config was found (None: recoverlib's metadata, or 16-bit).
    """

    source: str
    # None: 16-bit; "gptq", "awq", "compressed-tensors", "bnb"/"bitsandbytes", "hqq", or another library's
    method: str | None = None
    bits: Mapping[str, int] = field(default_factory=dict)
    # expert names: published, split, fused (recoverlib.quant.checkpoint.expert_layout)
    layout: str | None = None
    group_size: int | None = None
    sym: bool = True
    desc_act: bool = False
    g_idx: str | None = None
    config_file: str | None = None
    version: str | None = None  # AWQ's packing ("gemm", "gemv", ...), compressed-tensors' "format"
    model_type: str | None = None
    # GPTQ: the groups vLLM will build quantized, reading the config's ``dynamic`` rules against its own
    # module prefixes (``model.layers.N.block_sparse_moe.experts``), whatever the tensors hold
    rule_bits: Mapping[str, int] = field(default_factory=dict)
    # Mixtral experts named gate_proj/up_proj/down_proj under block_sparse_moe (llm-compressor's), where vLLM
    # quantization configs look for w1/w3/w2 and transformers 5 converts only w1/w2/w3 into its fused experts
    hf_proj_names: bool = False

    @property
    def recoverlib_made(self) -> bool:
        """Written by ``recoverlib quantize`` (its metadata describes it)."""
        return self.method is not None and self.config_file is None

    @classmethod
    def from_folder(cls, path: str | Path) -> ServedWeights:
        """Read a model folder: recoverlib's metadata, else the quantization config wherever the checkpoint
        keeps it; tensor names from the shard headers, and ``g_idx`` tensors where act-order is asked."""
        path = Path(path)
        meta, cfg = read_meta(path), read_model_config(path)
        model_type = cfg.get("model_type")
        qc, where = ({}, None) if meta else find_quant_config(path, cfg)
        method = meta["backend"] if meta else qc.get("quant_method") or _unnamed_method(qc, where)
        try:
            ckpt = Checkpoint.open(path) if method else None
        except RecoverlibError:
            ckpt = None  # no safetensors to read; the engine's own load says what is wrong
        names = ckpt.files if ckpt else {}
        if meta is not None:
            bits = {g: p["bits"] for g, p in meta["plan"].items()
                    if isinstance(p, dict) and p.get("bits") is not None}
            return cls(str(path), method, bits, expert_layout(names), model_type=model_type)
        scheme = _scheme(method, qc)
        bits = _group_bits(method, qc, scheme, names, _is_moe(cfg))
        g_idx = None
        if scheme["desc_act"] and scheme["group_size"] not in (None, -1) and ckpt is not None:
            g_idx = gidx_kind(ckpt, scheme["group_size"])
        rules = gptq_group_bits(qc, moe=_is_moe(cfg)) if method == "gptq" else {}
        hf_proj = any(".block_sparse_moe.experts." in n and n.split(".")[-2] in EXPERT_PROJ for n in names)
        return cls(str(path), method, bits, expert_layout(names), scheme["group_size"], scheme["sym"],
                   scheme["desc_act"], g_idx, where, scheme["version"], model_type, rules, hf_proj)

    @classmethod
    def from_plan(cls, plan, source: str) -> ServedWeights:
        """What ``recoverlib quantize`` would write for ``plan`` (a
        :class:`~recoverlib.quant.plan.PrecisionPlan`)."""
        bits = {g: p.bits for g, p in plan.groups().items() if p.quantized}
        return cls(source, plan.backend if bits else None, bits, "published" if bits else None)

    def describe(self) -> str:
        """One short label for tables: method, bits, group size, ordering, symmetry, layout."""
        if self.method is None:
            return "16-bit"
        bits = "/".join(sorted({str(b) for b in self.bits.values()})) or "?"
        parts = [self.method, f"{bits}-bit"]
        if self.group_size is not None:
            parts.append("per-row" if self.group_size == -1 else f"g{self.group_size}")
        if self.desc_act:
            parts.append(f"act-order ({self.g_idx})" if self.g_idx else "act-order")
        if not self.sym:
            parts.append("asym")
        if self.layout:
            parts.append(f"{self.layout} names")
        return " ".join(parts)


def transformers_problem(weights: ServedWeights) -> str | None:
    """Why transformers 5 would load this published checkpoint wrongly, or None. Its Mixtral keeps the
    experts as fused 3-D parameters that its AWQ and compressed-tensors integrations do not quantize, and its
    compressed-tensors load skips the conversion of per-expert tensors altogether: llm-compressor's W4A16
    Mixtrals, experts quantized or 16-bit, in either expert naming, loaded with "MISSING ... newly
    initialized" experts. GPTQ Mixtrals are read by recoverlib's own loader instead."""
    if weights.model_type != "mixtral" or weights.method not in ("awq", "compressed-tensors"):
        return None
    if "experts" in weights.bits:
        return (f"{weights.source}: a {weights.method} Mixtral with quantized experts, which transformers 5"
                " would load with its experts started from random weights: serve it with --engine vllm on a"
                " machine whose vLLM has an int4 MoE kernel (a GPU, or an AMX CPU)")
    if weights.method == "compressed-tensors":
        return (f"{weights.source}: a compressed-tensors Mixtral, which transformers 5.19 loads with its"
                " experts started from random weights (its compressed-tensors path skips Mixtral's expert"
                " conversion, 16-bit experts included): serve it with --engine vllm (`recoverlib convert`"
                " first where vLLM cannot read it as written)")
    return None


def exact_rewrites(weights: ServedWeights) -> list[str]:
    """Why vLLM cannot read a published checkpoint as written, for each departure from the layout it reads
    that ``recoverlib convert`` rewrites without changing a weight: the quantization config outside
    ``config.json``; GPTQModel's ``mlp.experts.N`` names; 16-bit experts that the ``dynamic`` rules leave
    quantized for vLLM; an act-order flag over static groups."""
    out = []
    if weights.method in PACKED_TENSOR and weights.config_file not in (None, "config.json"):
        out.append(f"its quantization config is only in {weights.config_file}, which vLLM does not read")
    if weights.method in PACKED_TENSOR and weights.layout == "split":
        out.append("its experts are named mlp.experts.N.gate_proj (GPTQModel's layout), which vLLM's Mixtral"
                   " loader rejects")
    if weights.method in PACKED_TENSOR and weights.hf_proj_names:
        out.append("its experts are named block_sparse_moe.experts.N.gate_proj, and vLLM's Mixtral matches"
                   " its quantization config against w1/w3/w2 (a 16-bit expert would be built quantized)")
    if weights.method == "gptq" and weights.bits and "experts" in set(weights.rule_bits) - set(weights.bits):
        out.append("its experts are 16-bit but its dynamic rules do not skip vLLM's prefix for them"
                   " (model.layers.N.block_sparse_moe.experts), so vLLM would build them quantized")
    if weights.method == "gptq" and weights.desc_act and weights.g_idx == "static":
        out.append("it is marked act-order, which vLLM refuses, over static groups (every g_idx[i] is"
                   " i // group_size)")
    return out


def find_quant_config(path: Path, cfg: dict | None = None) -> tuple[dict, str | None]:
    """The checkpoint's quantization config and the file it is in: ``quantization_config`` (or vLLM's
    ``compression_config``) in ``config.json``, else ``quantize_config.json`` / ``quant_config.json``."""
    cfg = read_model_config(path) if cfg is None else cfg
    qc = cfg.get("quantization_config") or cfg.get("compression_config")
    if qc:
        return dict(qc), "config.json"
    for name in CONFIG_FILES[1:]:
        if (path / name).is_file():
            return read_json_object(path / name), name
    return {}, None


def _unnamed_method(qc: dict, where: str | None) -> str | None:
    """AutoGPTQ's ``quantize_config.json`` names no method; AutoAWQ's ``quant_config.json`` says ``w_bit``."""
    if not qc:
        return None
    if "w_bit" in qc or where == "quant_config.json":
        return "awq"
    return "gptq" if "bits" in qc else None


def _scheme(method: str | None, qc: dict) -> dict:
    """Group size, symmetry, act-order and packing version from a method's config."""
    if method == "compressed-tensors":
        weights = _ct_weights(qc)
        order = weights.get("actorder")
        return {"group_size": weights.get("group_size") or -1, "sym": bool(weights.get("symmetric", True)),
                "desc_act": order in ("group", "dynamic"), "version": qc.get("format")}
    if method == "awq":
        return {"group_size": qc.get("group_size", qc.get("q_group_size")),
                "sym": not qc.get("zero_point", True), "desc_act": False,
                "version": str(qc.get("version", "gemm")).lower()}
    if method == "gptq":
        return {"group_size": qc.get("group_size"), "sym": bool(qc.get("sym", True)),
                "desc_act": bool(qc.get("desc_act", False)),
                "version": qc.get("checkpoint_format") or qc.get("format")}
    return {"group_size": None, "sym": True, "desc_act": False, "version": None}


def _ct_weights(qc: dict) -> dict:
    """The weight arguments of a compressed-tensors config's first group (llm-compressor writes one)."""
    for group in (qc.get("config_groups") or {}).values():
        if isinstance(group, dict) and isinstance(group.get("weights"), dict):
            return group["weights"]
    return {}


def _is_moe(cfg: dict) -> bool:
    """A mixture of experts by its config (Mixtral's ``num_local_experts``, Qwen-MoE's ``num_experts``)."""
    return bool(cfg.get("num_local_experts") or cfg.get("num_experts"))


def _group_bits(method: str | None, qc: dict, scheme: dict, names, moe: bool = True) -> dict[str, int]:
    """Bits of each quantized group: which groups are quantized from the tensors (where the method packs
    its weights), how many bits from the config (GPTQ's ``dynamic`` rules included)."""
    if method is None:
        return {}
    if method == "gptq":
        by_config = gptq_group_bits(qc, moe=moe)
        base = int(qc.get("bits", 4))
    elif method == "compressed-tensors":
        base = int(_ct_weights(qc).get("num_bits", 4))
        by_config = {}
    else:
        base = qc.get("bits", qc.get("w_bit"))
        by_config = {}
    packed = PACKED_TENSOR.get(method)
    seen = {group_of(n.rsplit(".", 1)[0]) for n in names if packed and n.endswith("." + packed)}
    if not seen:  # no packed tensors to read (or a method without them): the config alone
        return by_config
    return {g: int(by_config.get(g, base)) for g in sorted(seen)}


def gptq_group_bits(qc: Mapping, moe: bool = True) -> dict[str, int]:
    """Bits of each group a GPTQ ``quantization_config`` quantizes, as vLLM reads it: ``bits`` for every
    linear, the first ``dynamic`` rule matching a group's module overriding it (``-:`` skips the module); the
    router and ``lm_head`` only where a rule or ``lm_head: true`` says so (vLLM keeps Mixtral's router 16-bit
    regardless). ``moe``: a Mixtral's groups (experts, router), else a dense model's (``mlp``)."""
    import re

    out = {}
    for group, module in (SAMPLE_MODULES if moe else DENSE_SAMPLE_MODULES).items():
        bits = (
            qc.get("bits")
            if group in ("attention", "experts", "mlp") or (group == "lm_head" and qc.get("lm_head"))
            else None
        )
        for rule, override in (qc.get("dynamic") or {}).items():
            sign, pattern = (rule[0], rule[2:]) if rule[:2] in ("+:", "-:") else ("+", rule)
            if re.match(pattern, module):
                bits = None if sign == "-" else (override or {}).get("bits", qc.get("bits"))
                break
        if bits is not None:
            out[group] = int(bits)
    return out


def gidx_kind(ckpt: Checkpoint, group_size: int) -> str | None:
    """``static`` when every ``g_idx`` tensor (GPTQ's ``g_idx``, compressed-tensors' ``weight_g_idx``) is
    ``i // group_size``, ``permuted`` when one is not, None without any. Reads only those small tensors."""
    import torch

    names = [n for n in ckpt.files if n.endswith((".g_idx", ".weight_g_idx"))]
    for name in names:
        g = ckpt.read([name])[name]
        if not torch.equal(g.long(), torch.arange(g.numel()) // group_size):
            return "permuted"
    return "static" if names else None


def write_quant_config(path: Path, qc: dict, where: str) -> None:
    """Write ``qc`` back where it was found (``config.json``'s ``quantization_config``, or its own file)."""
    file = path / where
    if where == "config.json":
        data = read_json_object(file)
        key = "quantization_config" if "quantization_config" in data else "compression_config"
        data[key] = qc
    else:
        data = qc
    file.write_text(json.dumps(data, indent=2) + "\n")
