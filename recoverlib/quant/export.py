"""Export a GPTQ checkpoint in the layout vLLM's Mixtral loader reads.

vLLM 0.32's ``MixtralForCausalLM`` names the MoE block ``block_sparse_moe`` and loads experts through
``FusedMoE`` expert mappings with checkpoint names ``experts.N.w1/w2/w3`` (gate/down/up); its router
(``GateLinear``) is never quantized, and the GPTQ config is read by ``AutoGPTQConfig.from_config`` (``bits``,
``group_size``, ``desc_act``, ``sym``, ``lm_head``, ``dynamic``). GPTQModel writes ``mlp.*`` names, which vLLM
rejects (``no module 'layers.0.mlp'``); this rewrites names and keeps the tensors byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

from recoverlib.errors import RecoverlibError
from recoverlib.quant.api import META_FILE, read_meta
from recoverlib.quant.backends.base import copy_tokenizer
from recoverlib.quant.checkpoint import disk_name

VLLM_GPTQ_KEYS = ("quant_method", "bits", "group_size", "desc_act", "sym", "lm_head", "dynamic", "checkpoint_format")


def export_vllm(src: str | Path, out_dir: str | Path) -> Path:
    """Write ``src`` (a recoverlib GPTQ checkpoint) to ``out_dir`` with vLLM's Mixtral names and config."""
    from safetensors.torch import load_file, save_file

    src, out_dir = Path(src), Path(out_dir)
    meta = read_meta(src)
    if meta is None or meta["backend"] != "gptq":
        raise RecoverlibError(f"{src}: vLLM export needs a checkpoint made with a gptq-* plan (has {meta and meta['backend']})")
    if (meta["plan"].get("router") or {}).get("bits") is not None:
        raise RecoverlibError(f"{src}: plan {meta['plan']['name']!r} quantizes the router; vLLM's Mixtral router is always 16-bit")
    out_dir.mkdir(parents=True, exist_ok=True)
    state = load_file(str(src / "model.safetensors"))
    save_file({disk_name(k): v for k, v in state.items()}, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    qc = config["quantization_config"]
    config["quantization_config"] = {k: qc[k] for k in VLLM_GPTQ_KEYS if k in qc}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "quantize_config.json").write_text(json.dumps(config["quantization_config"], indent=2) + "\n")
    copy_tokenizer(src, out_dir)
    (out_dir / META_FILE).write_text(json.dumps({**meta, "exported_for": "vllm"}, indent=1) + "\n")
    return out_dir
