"""quantize / load / inspect: the entry points, and the ``recoverlib_quant.json`` written beside a checkpoint.

The metadata file records the plan and backend, so reloading never depends on sniffing file names.
Every quantize and every load is audited against the plan; a precision that was not realised raises.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import read_model_config
from recoverlib.quant.audit import (
    AuditReport,
    audit_checkpoint,
    audit_model,
    audit_plain_checkpoint,
    check_plan,
)
from recoverlib.quant.backends.base import QuantJob, copy_tokenizer, get_backend
from recoverlib.quant.plan import PrecisionPlan, load_plan
from recoverlib.quant.planner import plan_bytes

log = logging.getLogger("recoverlib")
META_FILE = "recoverlib_quant.json"
META_VERSION = 1


def check_source(model_path: Path) -> dict:
    """The config of a 16-bit HF Mixtral folder; raise for anything else (or an already quantized one)."""
    cfg = read_model_config(model_path)
    if cfg.get("model_type") != "mixtral":
        raise RecoverlibError(f"model {model_path}: model_type {cfg.get('model_type')!r}; MoE quantization supports mixtral")
    if cfg.get("quantization_config") or (model_path / META_FILE).is_file():
        raise RecoverlibError(f"model {model_path} is already quantized; quantize the 16-bit checkpoint")
    return cfg


def quantize(model_path: str | Path, plan: str | Path | PrecisionPlan, out_dir: str | Path,
             calibration: str | Path | Sequence[str] | None = None, seed: int = 0, progress: bool = True,
             device: str = "cpu", max_shard_size: str | int = "5GB") -> Path:
    """Quantize an HF Mixtral folder following ``plan`` (preset name, JSON file or plan) into ``out_dir``.

    Every backend streams (:mod:`recoverlib.quant.stream`): one decoder layer in memory at a time, quantized on
    ``device``, written as HF shards of at most ``max_shard_size`` (e.g. ``"5GB"``), crash-safe and resumable.
    bitsandbytes and HQQ go through recoverlib's piece loop; GPTQ through GPTQModel's layer loop with its disk
    offloading (``calibration``: a CSV of Kaggle rows or a ``text`` column, or a list of texts; default: built-in
    examples). The result is audited against the plan layer by layer; returns ``out_dir``.
    """
    from recoverlib.quant.calibration import calibration_texts
    from recoverlib.quant.checkpoint import parse_size
    from recoverlib.quant.stream import StreamJob, quantize_streaming

    plan, model_path = load_plan(plan), Path(model_path)
    if not get_backend(plan.backend).streams:
        model, report = quantize_model(model_path, plan, calibration, seed, progress)
        return save_quantized(model, report, model_path, out_dir, seed, progress)
    check_source(model_path)  # before reading calibration texts from it
    texts = tuple(calibration_texts(calibration, model_path, seed)) if get_backend(plan.backend).calibrated else ()
    job = StreamJob(model_path, plan, Path(out_dir), device, parse_size(max_shard_size), seed, progress, texts)
    return quantize_streaming(job)


def quantize_model(model_path: str | Path, plan: str | Path | PrecisionPlan,
                   calibration: str | Path | Sequence[str] | None = None, seed: int = 0, progress: bool = False):
    """Quantize in memory; return ``(model, audit report)``. Raises if the audit disagrees with the plan."""
    from recoverlib.quant.calibration import calibration_texts

    model_path = Path(model_path)
    plan = load_plan(plan)
    cfg = check_source(model_path)
    backend = get_backend(plan.backend)
    backend.validate(plan)
    texts = calibration_texts(calibration, model_path, seed) if backend.calibrated else ()
    _say(progress, f"quantize {model_path} with {plan.name} ({backend.name}), {len(texts)} calibration texts")
    model = backend.quantize(QuantJob(model_path, plan, tuple(texts), seed, progress))
    report = audit_model(model, plan, plan_bytes(cfg, plan).total_bytes)
    report.calibration_texts = len(texts)
    check_plan(report, plan)
    _say(progress, f"audit ok: {report.effective_bits:.3f} bits/param, {report.total_bytes:,} bytes")
    return model, report


def save_quantized(model, report: AuditReport, model_path: str | Path, out_dir: str | Path, seed: int = 0,
                   progress: bool = False) -> Path:
    """Write a model from :func:`quantize_model`, its tokenizer and ``recoverlib_quant.json`` to ``out_dir``."""
    out_dir = Path(out_dir)
    if report.plan_dict is None:
        raise RecoverlibError("save_quantized: the report has no plan (use quantize_model)")
    plan = PrecisionPlan.from_dict(report.plan_dict)
    out_dir.mkdir(parents=True, exist_ok=True)
    get_backend(plan.backend).save(model, out_dir)
    copy_tokenizer(Path(model_path), out_dir)
    write_meta(out_dir, plan, Path(model_path), report, seed, getattr(report, "calibration_texts", 0))
    _say(progress, f"wrote {out_dir}")
    return out_dir


def _say(progress: bool, msg: str) -> None:
    if progress:  # progress goes to stderr: stdout holds a command's output only
        print(f"[recoverlib quantize] {msg}", file=sys.stderr, flush=True)


def write_meta(out_dir: Path, plan: PrecisionPlan, source: Path, report: AuditReport, seed: int, n_calibration: int) -> None:
    meta = {"format_version": META_VERSION, "backend": plan.backend, "plan": plan.to_dict(), "source": str(source),
            "seed": seed, "calibration_texts": n_calibration, "audit": report.to_json()}
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")


def read_meta(path: str | Path) -> dict | None:
    """The checkpoint's ``recoverlib_quant.json`` as a dict, or None for a checkpoint recoverlib did not make."""
    file = Path(path) / META_FILE
    if not file.is_file():
        return None
    meta = json.loads(file.read_text())
    if meta.get("format_version") != META_VERSION:
        raise RecoverlibError(f"{file}: format_version {meta.get('format_version')} (this recoverlib reads {META_VERSION})")
    return meta


def is_quantized(path: str | Path) -> bool:
    """True for a recoverlib quantized checkpoint or any HF checkpoint with a ``quantization_config``."""
    path = Path(path)
    if (path / META_FILE).is_file():
        return True
    cfg = path / "config.json"
    return cfg.is_file() and bool(json.loads(cfg.read_text()).get("quantization_config"))


def load_quantized(path: str | Path, check: bool = True, device_map: str | dict | None = None):
    """Load a recoverlib quantized checkpoint with its backend; audit it against its plan (raise on mismatch).

    ``device_map``: None keeps it on the CPU; ``"auto"``, a device or accelerate's dict places it on GPUs.
    """
    path = Path(path)
    meta = read_meta(path)
    if meta is None:
        raise RecoverlibError(f"{path}: no {META_FILE}; not a checkpoint made by `recoverlib quantize`")
    plan = PrecisionPlan.from_dict(meta["plan"], name=meta["plan"].get("name", "custom"))
    model = get_backend(meta["backend"]).load(path, plan, device_map=device_map)
    if check:
        check_plan(audit_model(model, plan), plan)
    return model


def inspect_checkpoint(path: str | Path, check: bool = True) -> AuditReport:
    """Audit any checkpoint: recoverlib-quantized, an HF bitsandbytes one, or plain 16-bit.

    With ``check``, raise when the realised precision differs from the checkpoint's plan (for an HF
    bitsandbytes checkpoint, the plan its quantization_config implies).
    """
    path = Path(path)
    meta = read_meta(path)
    if meta is not None:
        plan = PrecisionPlan.from_dict(meta["plan"], name=meta["plan"].get("name", "custom"))
        if get_backend(meta["backend"]).streams:  # piece by piece, never the whole model in memory
            report = audit_checkpoint(path, plan, plan_bytes(path, plan).total_bytes)
            if check:
                check_plan(report, plan)
            return report
        model = get_backend(meta["backend"]).load(path, plan)
    elif not (check_plain_loadable(path).get("quantization_config")):  # 16-bit: from the headers, nothing loaded
        return audit_plain_checkpoint(path)
    else:
        model, plan = _load_plain(path)
    planned = plan_bytes(path, plan).total_bytes if plan is not None else None
    report = audit_model(model, plan, planned)
    if check and plan is not None:
        check_plan(report, plan)
    return report


def check_plain_loadable(path: str | Path) -> dict:
    """The config of a checkpoint plain transformers can load; raise for one it would load wrongly."""
    path = Path(path)
    cfg = read_model_config(path)
    method = (cfg.get("quantization_config") or {}).get("quant_method")
    if cfg.get("model_type") == "mixtral" and method in ("gptq", "hqq"):
        raise RecoverlibError(
            f"{path}: a {method} Mixtral without {META_FILE}; plain transformers would start its experts from random"
            f" weights. Quantize the 16-bit model with `recoverlib quantize`"
        )
    return cfg


def _load_plain(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    cfg = check_plain_loadable(path)
    dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    return model.eval(), _implied_plan(cfg)


def _implied_plan(cfg: dict) -> PrecisionPlan | None:
    """The plan an HF bitsandbytes quantization_config asks for: every linear group not in the skip list."""
    from recoverlib.quant.backends.bnb import SKIP_NAMES
    from recoverlib.quant.plan import GroupPrecision

    qc = cfg.get("quantization_config") or {}
    if qc.get("quant_method") != "bitsandbytes":
        return None
    prec = GroupPrecision(8) if qc.get("load_in_8bit") else GroupPrecision(4, 64)
    skip = set(qc.get("llm_int8_skip_modules") or ["lm_head"])
    groups = {g: prec for g, names in SKIP_NAMES.items() if g != "lm_head" and not skip & set(names)}
    return PrecisionPlan(backend="bnb", name="hf-bitsandbytes", **groups)
