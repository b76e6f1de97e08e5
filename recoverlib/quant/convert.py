"""Convert a GPTQ Mixtral checkpoint in GPTQModel's layout into Mixtral's published layout, which vLLM loads.

GPTQModel (and recoverlib before this layout) writes experts as ``mlp.experts.N.gate_proj/up_proj/down_proj``
and the router as ``mlp.gate``; vLLM 0.32's Mixtral loader reads only ``block_sparse_moe.experts.N.w1/w3/w2``
and ``block_sparse_moe.gate`` (``There is no module or parameter named 'layers.0.mlp'``). The conversion
renames tensors shard by shard (one shard in memory at a time) and keeps every byte of every tensor; config,
tokenizer and ``recoverlib_quant.json`` are copied.
"""

from __future__ import annotations

from pathlib import Path

from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import read_model_config
from recoverlib.quant.checkpoint import Checkpoint, disk_name, expert_layout, rewrite_names
from recoverlib.quant.meta import read_meta


def publish_layout(src: str | Path, out: str | Path) -> Path:
    """Write the GPTQ Mixtral ``src`` to ``out`` with Mixtral's published tensor names; return ``out``."""
    src, out = Path(src), Path(out)
    meta, cfg = read_meta(src), read_model_config(src)
    method = meta["backend"] if meta else (cfg.get("quantization_config") or {}).get("quant_method")
    if method != "gptq" or cfg.get("model_type") != "mixtral":
        raise RecoverlibError(
            f"{src}: convert takes a GPTQ Mixtral (found {cfg.get('model_type')}, {method or '16-bit'});"
            " bitsandbytes and HQQ checkpoints are served by --engine hf as they are"
        )
    layout = expert_layout(Checkpoint.open(src).files)  # also refuses a missing or truncated shard
    if layout == "published":
        raise RecoverlibError(f"{src} already uses Mixtral's published layout; vLLM loads it as it is")
    rewrite_names(src, out, disk_name)
    return out
