"""quantize / load / inspect: the entry points of quantization (a Mixtral's experts, a dense model's MLP).

Every quantize streams (:mod:`recoverlib.quant.stream`) and is audited against its plan layer by layer; every
load of a recoverlib checkpoint goes through its backend (named in ``recoverlib_quant.json``,
:mod:`recoverlib.quant.meta`) and is audited too. A precision that was not realised raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from recoverlib.architectures import architecture_of
from recoverlib.errors import RecoverlibError
from recoverlib.quant.audit import (
    AuditReport,
    audit_checkpoint,
    audit_model,
    audit_plain_checkpoint,
    check_plan,
)
from recoverlib.quant.backends import get_backend
from recoverlib.quant.backends.bnb import SKIP_NAMES
from recoverlib.quant.calibration import calibration_texts
from recoverlib.quant.checkpoint import parse_size
from recoverlib.quant.meta import META_FILE, check_plain_loadable, check_source, read_meta
from recoverlib.quant.plan import GroupPrecision, PrecisionPlan, plan_for_model
from recoverlib.quant.planner import plan_bytes
from recoverlib.quant.stream import StreamJob, quantize_streaming


def quantize(model_path: str | Path, plan: str | Path | PrecisionPlan, out_dir: str | Path,
             calibration: str | Path | Sequence[str] | None = None, seed: int = 0, progress: bool = True,
             device: str = "cpu", max_shard_size: str | int = "5GB", template: str = "auto") -> Path:
    """Quantize an HF model folder (Mixtral, or a dense Mistral, Llama, Qwen2 or Gemma) following ``plan``
    (preset name, JSON file or plan, fitted to the model's groups) into ``out_dir``.

    One decoder layer in memory at a time, quantized on ``device``, written as HF shards of at most
    ``max_shard_size`` (e.g. ``"5GB"``), crash-safe and resumable (:mod:`recoverlib.quant.stream`).
    bitsandbytes and HQQ go through recoverlib's piece loop; GPTQ through GPTQModel's layer loop with its
    disk offloading (``calibration``: a CSV of Kaggle rows or a ``text`` column, or a list of texts; default:
    built-in examples; rows are rendered as ``template`` recovery prompts, plain for a tokenizer without a
    chat template under ``auto``). The result is audited against the plan layer by layer; returns ``out_dir``.
    """
    model_path = Path(model_path)
    # before reading calibration texts: the folder, and a plan the model can take
    plan = plan_for_model(plan, check_source(model_path), f"model {model_path}")
    texts = (
        tuple(calibration_texts(calibration, model_path, seed, template))
        if get_backend(plan.backend).calibrated
        else ()
    )
    job = StreamJob(
        model_path, plan, Path(out_dir), device, parse_size(max_shard_size), seed, progress, texts
    )
    return quantize_streaming(job)


def load_quantized(path: str | Path, check: bool = True, device_map: str | dict | None = None):
    """Load a recoverlib quantized checkpoint with its backend; audit it against its plan (raise on mismatch).

    ``device_map``: None keeps it on the CPU; ``"auto"``, a device or accelerate's dict places it on GPUs.
    """
    path = Path(path)
    meta = read_meta(path)
    if meta is None:
        raise RecoverlibError(f"{path}: no {META_FILE}; not a checkpoint made by `recoverlib quantize`")
    plan = _plan_of(meta)
    model = get_backend(meta["backend"]).load(path, plan, device_map=device_map)
    if check:
        check_plan(audit_model(model, plan), plan)
    return model


def inspect_checkpoint(path: str | Path, check: bool = True) -> AuditReport:
    """Audit any checkpoint: recoverlib-quantized (piece by piece), an HF bitsandbytes one, or plain 16-bit
    (from the headers, nothing loaded).

    With ``check``, raise when the realised precision differs from the checkpoint's plan (for an HF
    bitsandbytes checkpoint, the plan its quantization_config implies).
    """
    path = Path(path)
    meta = read_meta(path)
    if meta is not None:
        plan = _plan_of(meta)
        report = audit_checkpoint(path, plan, plan_bytes(path, plan).total_bytes)
    elif not check_plain_loadable(path).get("quantization_config"):
        return audit_plain_checkpoint(path)
    else:
        model, plan = _load_plain(path)
        report = audit_model(model, plan, plan_bytes(path, plan).total_bytes if plan is not None else None)
    if check and plan is not None:
        check_plan(report, plan)
    return report


def _plan_of(meta: dict) -> PrecisionPlan:
    return PrecisionPlan.from_dict(meta["plan"], name=meta["plan"].get("name", "custom"))


def _load_plain(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    cfg = check_plain_loadable(path)
    dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    return model.eval(), _implied_plan(cfg)


def _implied_plan(cfg: dict) -> PrecisionPlan | None:
    """The plan an HF bitsandbytes quantization_config asks for: every linear group of the model not in the
    skip list."""
    qc = cfg.get("quantization_config") or {}
    if qc.get("quant_method") != "bitsandbytes":
        return None
    prec = GroupPrecision(8) if qc.get("load_in_8bit") else GroupPrecision(4, 64)
    skip = set(qc.get("llm_int8_skip_modules") or ["lm_head"])
    present = architecture_of(cfg).groups()
    groups = {g: prec for g, names in SKIP_NAMES.items()
              if g in present and g != "lm_head" and not skip & set(names)}
    return PrecisionPlan(backend="bnb", name="hf-bitsandbytes", **groups)
