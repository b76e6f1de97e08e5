"""``recoverlib_quant.json``, written beside every checkpoint ``recoverlib quantize`` makes, and what a
folder is.

The metadata records the plan and backend, so reloading never depends on sniffing file names. Also here: the
one check that a folder is a 16-bit model of a family recoverlib quantizes (:mod:`recoverlib.architectures`),
and that plain transformers can load a checkpoint correctly.
"""

from __future__ import annotations

import json
from pathlib import Path

from recoverlib.architectures import architecture_of
from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import read_model_config

META_FILE = "recoverlib_quant.json"
META_VERSION = 1


def write_meta(out_dir: Path, plan, source: Path, audit: dict, seed: int, n_calibration: int) -> None:
    """Write ``recoverlib_quant.json``: format, backend, the plan (a PrecisionPlan), source, seed and the
    audit."""
    meta = {
        "format_version": META_VERSION,
        "backend": plan.backend,
        "plan": plan.to_dict(),
        "source": str(source),
        "seed": seed,
        "calibration_texts": n_calibration,
        "audit": audit,
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")


def read_meta(path: str | Path) -> dict | None:
    """The checkpoint's ``recoverlib_quant.json`` as a dict, or None for a checkpoint recoverlib did not
    make."""
    file = Path(path) / META_FILE
    if not file.is_file():
        return None
    meta = json.loads(file.read_text())
    if meta.get("format_version") != META_VERSION:
        raise RecoverlibError(
            f"{file}: format_version {meta.get('format_version')} (this recoverlib reads {META_VERSION})"
        )
    return meta


def is_quantized(path: str | Path) -> bool:
    """True for a recoverlib quantized checkpoint, any HF checkpoint with a ``quantization_config``, and one
    that keeps its quantization config beside (AutoGPTQ's ``quantize_config.json``, AutoAWQ's
    ``quant_config.json``)."""
    path = Path(path)
    if any((path / name).is_file() for name in (META_FILE, "quantize_config.json", "quant_config.json")):
        return True
    cfg = path / "config.json"
    return cfg.is_file() and bool(json.loads(cfg.read_text()).get("quantization_config"))


def check_source(model_path: Path) -> dict:
    """The config of a 16-bit HF folder of a family recoverlib quantizes (Mixtral, Mistral, Llama, Qwen2,
    Gemma); raise for anything else (or an already quantized one)."""
    cfg = read_model_config(model_path)
    architecture_of(cfg, f"model {model_path}")
    if cfg.get("quantization_config") or (model_path / META_FILE).is_file():
        raise RecoverlibError(f"model {model_path} is already quantized; quantize the 16-bit checkpoint")
    return cfg


def check_plain_loadable(path: str | Path) -> dict:
    """The config of a checkpoint plain transformers can load; raise for one it would load wrongly."""
    path = Path(path)
    cfg = read_model_config(path)
    method = (cfg.get("quantization_config") or {}).get("quant_method")
    if cfg.get("model_type") == "mixtral" and method in ("gptq", "hqq"):
        served = "--engine hf serves it through recoverlib's own loader" if method == "gptq" else \
            "quantize the 16-bit model with `recoverlib quantize`"
        raise RecoverlibError(
            f"{path}: a {method} Mixtral without {META_FILE}; plain transformers would start its experts "
            f"from random weights ({served})"
        )
    return cfg
