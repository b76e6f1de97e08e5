"""Streaming quantization: the crash-safe, resumable run every backend goes through.

The backend writes the quantized checkpoint under ``OUT.partial`` (:meth:`QuantBackend.write_streamed`):
bitsandbytes and HQQ through recoverlib's piece loop (:mod:`recoverlib.quant.pieces`, one decoder layer in
memory at a time), GPTQ through GPTQModel's own layer loop with disk offloading (each layer's calibration
activations feed the next). What follows is shared: tokenizer, the layer-by-layer audit against the plan (the
planner's bytes must equal the audited bytes), ``recoverlib_quant.json``, and the rename of the finished
folder to ``OUT``.

Crash safety: everything is written under the sibling folder ``OUT.partial``, whose
:class:`~recoverlib.quant.progress.RunRecord` records the arguments and each finished piece or stage. A rerun
with the same arguments skips what is finished; other arguments are refused. A folder named ``OUT`` is
complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import copy_tokenizer
from recoverlib.quant.audit import audit_checkpoint, check_plan
from recoverlib.quant.backends import get_backend
from recoverlib.quant.checkpoint import Checkpoint, parse_size
from recoverlib.quant.meta import check_source, write_meta
from recoverlib.quant.plan import PrecisionPlan, plan_for_model
from recoverlib.quant.planner import plan_bytes
from recoverlib.quant.progress import RunRecord

DEFAULT_SHARD = "5GB"
PROGRESS_VERSION = 1


@dataclass(frozen=True)
class StreamJob:
    """One streaming quantize, validated before any tensor is read.

    ``device``: where linears are quantized (``cpu``, ``cuda``, ``cuda:N``); ``max_shard_bytes``: the largest
    output shard in bytes (transformers' ``max_shard_size``).
    """

    model_path: Path
    plan: PrecisionPlan
    out_dir: Path
    device: str = "cpu"
    max_shard_bytes: int = parse_size(DEFAULT_SHARD)
    seed: int = 0
    progress: bool = True
    calibration: tuple[str, ...] = ()  # texts, for a backend that calibrates (GPTQ)

    def __post_init__(self):
        object.__setattr__(self, "device", check_device(self.device))
        if self.max_shard_bytes <= 0:
            raise RecoverlibError(f"max shard size must be positive (got {self.max_shard_bytes})")

    @property
    def partial_dir(self) -> Path:
        return self.out_dir.parent / f"{self.out_dir.name}.partial"


def check_device(device: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``; a CUDA device must exist here (one line otherwise)."""
    import torch

    text = str(device)
    if text == "cpu":
        return text
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise RecoverlibError(
                f"device {text}: CUDA is not available on this machine (torch {torch.__version__})"
            )
        index = int(text[5:]) if ":" in text else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise RecoverlibError(f"device {text}: only {torch.cuda.device_count()} CUDA device(s) here")
        return f"cuda:{index}"
    raise RecoverlibError(f"device {text!r}: give cpu, cuda or cuda:N")


def quantize_streaming(job: StreamJob) -> Path:
    """Quantize ``job.model_path`` into ``job.out_dir``; resume an interrupted run. Returns OUT.

    The plan is first fitted to the model (:func:`~recoverlib.quant.plan.plan_for_model`): the checkpoint
    records the groups the model has, e.g. ``mlp`` and no ``experts`` for a dense Mistral."""
    cfg = check_source(job.model_path)
    job = replace(job, plan=plan_for_model(job.plan, cfg, f"model {job.model_path}"))
    backend = get_backend(job.plan.backend)
    backend.validate(job.plan)
    if backend.calibrated and not job.calibration:
        raise RecoverlibError(f"backend {backend.name!r} needs calibration texts")
    if job.out_dir.exists() and any(job.out_dir.iterdir()):
        raise RecoverlibError(f"{job.out_dir} exists and is not empty; remove it or choose another --out")
    source = Checkpoint.open(job.model_path)  # a missing or truncated input shard fails here, before any work
    record = RunRecord.open(job.partial_dir, _fingerprint(job, source))
    folder = backend.write_streamed(job, source, record)
    return _seal(job, cfg, folder, record)


def _fingerprint(job: StreamJob, source: Checkpoint) -> dict:
    files = sorted({f.name: f.stat().st_size for f in source.files.values()}.items())
    found = {"version": PROGRESS_VERSION, "source": str(job.model_path.resolve()), "source_files": files,
             "plan": job.plan.to_dict(), "device": job.device.split(":")[0], "seed": job.seed}
    if job.calibration:
        found["calibration"] = hashlib.sha256(json.dumps(list(job.calibration)).encode()).hexdigest()
    return found


def _seal(job: StreamJob, cfg: dict, final: Path, record: RunRecord) -> Path:
    """Audit the written checkpoint layer by layer, add tokenizer and metadata, rename it to OUT (complete
    only now)."""
    copy_tokenizer(job.model_path, final)
    report = audit_checkpoint(final, job.plan, plan_bytes(cfg, job.plan).total_bytes, progress=job.progress)
    check_plan(report, job.plan)
    if report.total_bytes != report.planned_bytes:
        raise RecoverlibError(
            f"audit: {report.total_bytes:,} bytes written, the planner says {report.planned_bytes:,}"
        )
    write_meta(final, job.plan, job.model_path, report.to_json(), job.seed, len(job.calibration))
    if job.out_dir.exists():
        job.out_dir.rmdir()  # empty (checked at the start)
    os.replace(final, job.out_dir)
    shutil.rmtree(record.work)
    if job.progress:
        print(
            f"[recoverlib quantize] audit ok: {report.effective_bits:.3f} bits/param, "
            f"{report.total_bytes:,} bytes",
            file=sys.stderr,
            flush=True,
        )
    return job.out_dir
