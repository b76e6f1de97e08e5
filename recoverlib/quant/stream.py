"""Streaming quantization: one decoder layer in memory at a time, crash-safe, resumable, sharded output.

For each piece (the embeddings/norm/head, then each decoder layer) the 16-bit tensors are read with
``safe_open``, the piece is built directly (:mod:`recoverlib.quant.layerwise`), its linears are quantized on
``device`` one by one, and the piece is written to ``OUT.partial/parts/<piece>.safetensors`` and freed. The 16-bit
input is memory-mapped lazily, so the host holds the piece's quantized tensors, the one linear being quantized and
the quantizer's scratch; the final packing into HF shards holds one output shard. Measured at Mixtral-8x7B's full
width with bnb-nf4 (benchmarks/results/quant_scale.md): peak RSS 2.99 GB for 1 and for 2 layers, 4.42 GB for 4
layers (their whole 3.79 GB output fits one 5 GB shard; 3.02 GB with 1 GB shards); the old whole-model path
peaked at 5.30 GB for 1 layer.
:func:`recoverlib.quant.planner.quantize_peak` estimates the peak from the config (within 8% of those runs).

That is the default :meth:`~recoverlib.quant.backends.base.QuantBackend.write_streamed` (bitsandbytes, HQQ). GPTQ
carries calibration activations from layer to layer, so its backend runs GPTQModel's own layer loop with disk
offloading instead and writes ``OUT.partial/quantized``; everything after (audit, metadata, rename) is shared.

Crash safety: everything is written under the sibling folder ``OUT.partial``; ``progress.json`` there records the
arguments (a fingerprint, with a digest of the calibration texts) and each finished piece or stage. A rerun with
the same arguments skips finished pieces (the quantizers are deterministic, so the bytes equal an uninterrupted
run's); other arguments are refused. When the shards are written and audited, the folder holding them is renamed
to ``OUT``: a folder named ``OUT`` is complete.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from recoverlib.errors import RecoverlibError
from recoverlib.quant.checkpoint import Checkpoint, parse_size, save_tensors, write_sharded
from recoverlib.quant.plan import PrecisionPlan

DEFAULT_SHARD = "5GB"
PROGRESS_FILE = "progress.json"
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
            raise RecoverlibError(f"device {text}: CUDA is not available on this machine (torch {torch.__version__})")
        index = int(text[5:]) if ":" in text else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise RecoverlibError(f"device {text}: only {torch.cuda.device_count()} CUDA device(s) here")
        return f"cuda:{index}"
    raise RecoverlibError(f"device {text!r}: give cpu, cuda or cuda:N")


def quantize_streaming(job: StreamJob) -> Path:
    """Quantize ``job.model_path`` into ``job.out_dir`` piece by piece; resume an interrupted run. Returns OUT."""
    from recoverlib.quant.api import check_source
    from recoverlib.quant.backends.base import get_backend

    cfg = check_source(job.model_path)
    backend = get_backend(job.plan.backend)
    backend.validate(job.plan)
    if not backend.streams:
        raise RecoverlibError(f"backend {backend.name!r} does not quantize layer by layer")
    if backend.calibrated and not job.calibration:
        raise RecoverlibError(f"backend {backend.name!r} needs calibration texts")
    if job.out_dir.exists() and any(job.out_dir.iterdir()):
        raise RecoverlibError(f"{job.out_dir} exists and is not empty; remove it or choose another --out")
    source = Checkpoint.open(job.model_path)  # a missing or truncated input shard fails here, before any work
    record = _Progress.open(job.partial_dir, _fingerprint(job, source))
    folder = backend.write_streamed(job, source, record)
    return _seal(job, backend, cfg, folder, record)


def _fingerprint(job: StreamJob, source: Checkpoint) -> dict:
    import hashlib

    files = sorted({f.name: f.stat().st_size for f in source.files.values()}.items())
    found = {"version": PROGRESS_VERSION, "source": str(job.model_path.resolve()), "source_files": files,
             "plan": job.plan.to_dict(), "device": job.device.split(":")[0], "seed": job.seed}
    if job.calibration:
        found["calibration"] = hashlib.sha256(json.dumps(list(job.calibration)).encode()).hexdigest()
    return found


class _Progress:
    """``OUT.partial/progress.json``: the run's fingerprint and the finished pieces (name -> file bytes) or
    stages (name -> {file: bytes})."""

    def __init__(self, work: Path, fingerprint: dict, done: dict[str, int | dict[str, int]]):
        self.work, self.fingerprint, self.done = work, fingerprint, done

    @classmethod
    def open(cls, work: Path, fingerprint: dict) -> _Progress:
        file = work / PROGRESS_FILE
        if file.is_file():
            saved = json.loads(file.read_text())
            if saved.get("fingerprint") != json.loads(json.dumps(fingerprint)):
                raise RecoverlibError(f"{work} holds an interrupted quantize with other arguments; remove it to start again")
            record = cls(work, fingerprint, {})
            record.done = {p: n for p, n in saved["done"].items() if record._intact(p, n)}
            return record
        if work.exists():
            shutil.rmtree(work)  # no record: nothing in it can be trusted
        (work / "parts").mkdir(parents=True)
        record = cls(work, fingerprint, {})
        record.save()
        return record

    def file(self, piece: str) -> Path:
        return self.work / "parts" / f"{piece}.safetensors"

    def mark(self, piece: str) -> None:
        self.done[piece] = self.file(piece).stat().st_size
        self.save()

    def mark_folder(self, name: str, folder: Path) -> None:
        """Record a finished stage whose output is ``folder`` (under ``work``): its files and their sizes."""
        self.done[name] = {str(f.relative_to(self.work)): f.stat().st_size for f in sorted(folder.iterdir()) if f.is_file()}
        self.save()

    def _intact(self, name: str, recorded) -> bool:
        """A piece file, or every file of a stage, still there with the recorded size."""
        files = recorded if isinstance(recorded, dict) else {str(self.file(name).relative_to(self.work)): recorded}
        return all((self.work / f).is_file() and (self.work / f).stat().st_size == n for f, n in files.items())

    def save(self) -> None:
        tmp = self.work / (PROGRESS_FILE + ".tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "done": self.done}, indent=1) + "\n")
        os.replace(tmp, self.work / PROGRESS_FILE)


def write_piecewise(backend, job: StreamJob, source: Checkpoint, record: _Progress) -> Path:
    """Quantize piece by piece into ``work/parts`` (resuming after the last finished piece), then pack the
    pieces into HF shards under ``work/final``; return ``work/final``."""
    from recoverlib.quant.api import check_source

    cfg = check_source(job.model_path)
    _quantize_pieces(job, backend, source, cfg, record)
    return _pack(job, backend, cfg, record)


def _quantize_pieces(job: StreamJob, backend, source: Checkpoint, cfg: dict, record: _Progress) -> None:
    import torch

    from recoverlib.quant import layerwise as lw

    config = lw.mixtral_config(cfg)
    dtype = getattr(torch, job.plan.compute_dtype)
    todo = [p for p in lw.piece_names(config.num_hidden_layers) if p not in record.done]
    if record.done and job.progress:
        print(f"[recoverlib quantize] resuming: {len(record.done)} piece(s) already done", file=sys.stderr, flush=True)
    with backend.session(job.plan, job.device), torch.no_grad():
        for piece in tqdm(todo, desc=f"quantize ({job.plan.name}, {job.device})", unit="piece", disable=not job.progress):
            module = lw.read_source_piece(source, config, piece, dtype)
            prefix = lw.piece_prefix(piece)
            lw.quantize_piece(backend, module, prefix, job.plan, job.device)
            state = lw.piece_state(backend, module, prefix)
            del module
            save_tensors(state, record.file(piece))
            record.mark(piece)
            del state
            gc.collect()
            _release_heap()
            if job.device.startswith("cuda"):
                torch.cuda.empty_cache()


def _release_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``). Tensors under glibc's mmap threshold (at most
    32 MB) come from the heap, whose freed space the process otherwise keeps: with 7 MB expert matrices the peak RSS
    grew by 0.36 GB from 2 to 6 layers without this. A no-op where glibc is not the C library."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        return


def _pack(job: StreamJob, backend, cfg: dict, record: _Progress) -> Path:
    """Pack the finished pieces into HF shards and the config under ``work/final``."""
    from recoverlib.quant import layerwise as lw

    work = record.work
    final = work / "final"
    if final.exists():
        shutil.rmtree(final)  # an interrupted packing: pieces are all there, pack again
    final.mkdir()
    pieces = lw.piece_names(lw.mixtral_config(cfg).num_hidden_layers)
    parts = Checkpoint.of_files(work / "parts", {record.file(p): None for p in pieces})
    order = [k for p in pieces for k in sorted(parts.files) if parts.files[k] == record.file(p)]
    write_sharded(parts, order, final, job.max_shard_bytes, progress=job.progress)
    _write_json(final / "config.json", backend.checkpoint_config(cfg, job.plan))
    return final


def _seal(job: StreamJob, backend, cfg: dict, final: Path, record: _Progress) -> Path:
    """Audit the written checkpoint layer by layer, add tokenizer and metadata, rename it to OUT (complete only now)."""
    from recoverlib.quant.api import write_meta
    from recoverlib.quant.audit import audit_checkpoint, check_plan
    from recoverlib.quant.backends.base import copy_tokenizer
    from recoverlib.quant.planner import plan_bytes

    copy_tokenizer(job.model_path, final)
    report = audit_checkpoint(final, job.plan, plan_bytes(cfg, job.plan).total_bytes, progress=job.progress)
    check_plan(report, job.plan)
    if report.total_bytes != report.planned_bytes:
        raise RecoverlibError(f"audit: {report.total_bytes:,} bytes written, the planner says {report.planned_bytes:,}")
    write_meta(final, job.plan, job.model_path, report, job.seed, len(job.calibration))
    if job.out_dir.exists():
        job.out_dir.rmdir()  # empty (checked at the start)
    os.replace(final, job.out_dir)
    shutil.rmtree(record.work)
    if job.progress:
        print(f"[recoverlib quantize] audit ok: {report.effective_bits:.3f} bits/param, {report.total_bytes:,} bytes",
              file=sys.stderr, flush=True)
    return job.out_dir


def _write_json(file: Path, data: dict) -> None:
    try:
        file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    except OSError as err:
        raise RecoverlibError(f"writing {file}: {err.strerror or err}") from None
