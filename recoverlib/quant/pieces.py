"""recoverlib's piece loop: a 16-bit model (Mixtral or dense) quantized one piece at a time (bitsandbytes,
HQQ).

For each piece (the embeddings/norm/head, then each decoder layer) the 16-bit tensors are read with
``safe_open``, the piece is built directly (:mod:`recoverlib.quant.layerwise`), its linears are quantized on
``device`` one by one through the backend's ``quantize_linear``, and the piece is written to
``work/parts/<piece>.safetensors`` and freed. The 16-bit input is memory-mapped lazily, so the host holds the
piece's quantized tensors, the one linear being quantized and the quantizer's scratch; packing into HF shards
then holds one output shard. Measured at Mixtral-8x7B's full width with bnb-nf4
(benchmarks/results/quant_scale.md): peak RSS 2.99 GB for 1 and for 2 layers, 4.42 GB for 4 layers (their
whole 3.79 GB output fits one 5 GB shard; 3.02 GB with 1 GB shards).
:func:`recoverlib.quant.planner.quantize_peak` estimates the peak from the config (within 8% of those runs).
At Mistral-7B's full width (benchmarks/results/quant_scale_dense.md): 1.72, 1.73 and 1.79 GB for 1, 2 and 4
layers, the planner 16-21% above.

A rerun after a kill skips the pieces :class:`~recoverlib.quant.progress.RunRecord` holds as finished; the
quantizers are deterministic, so the bytes equal an uninterrupted run's.
"""

from __future__ import annotations

import gc
import json
import shutil
import sys
from pathlib import Path

from tqdm.auto import tqdm

from recoverlib.errors import RecoverlibError
from recoverlib.quant import layerwise as lw
from recoverlib.quant.checkpoint import Checkpoint, save_tensors, write_sharded
from recoverlib.quant.meta import check_source
from recoverlib.quant.progress import RunRecord


def write_piecewise(backend, job, source: Checkpoint, record: RunRecord) -> Path:
    """Quantize ``job`` (a :class:`~recoverlib.quant.stream.StreamJob`) piece by piece into ``work/parts``
    (resuming after the last finished piece), then pack the pieces into HF shards under ``work/final``."""
    cfg = check_source(job.model_path)
    _quantize_pieces(job, backend, source, cfg, record)
    return _pack(job, backend, cfg, record)


def _quantize_pieces(job, backend, source: Checkpoint, cfg: dict, record: RunRecord) -> None:
    import torch

    config = lw.model_config(cfg)
    dtype = getattr(torch, job.plan.compute_dtype)
    todo = [p for p in lw.piece_names(config.num_hidden_layers) if p not in record.done]
    if record.done and job.progress:
        print(
            f"[recoverlib quantize] resuming: {len(record.done)} piece(s) already done",
            file=sys.stderr,
            flush=True,
        )
    (record.work / "parts").mkdir(exist_ok=True)
    with backend.session(job.plan, job.device), torch.no_grad():
        for piece in tqdm(
            todo, desc=f"quantize ({job.plan.name}, {job.device})", unit="piece", disable=not job.progress
        ):
            module = lw.read_source_piece(source, config, piece, dtype)
            prefix = lw.piece_prefix(piece)
            lw.quantize_piece(backend, module, prefix, job.plan, job.device)
            state = lw.piece_state(backend, module, prefix)
            del module
            save_tensors(state, record.file(piece))
            record.mark(piece)
            del state
            gc.collect()
            lw.release_heap()
            if job.device.startswith("cuda"):
                torch.cuda.empty_cache()


def _pack(job, backend, cfg: dict, record: RunRecord) -> Path:
    """Pack the finished pieces into HF shards and the config under ``work/final``."""
    work = record.work
    final = work / "final"
    if final.exists():
        shutil.rmtree(final)  # an interrupted packing: pieces are all there, pack again
    final.mkdir()
    pieces = lw.piece_names(lw.model_config(cfg).num_hidden_layers)
    parts = Checkpoint.of_files(work / "parts", {record.file(p): None for p in pieces})
    order = [k for p in pieces for k in sorted(parts.files) if parts.files[k] == record.file(p)]
    write_sharded(parts, order, final, job.max_shard_bytes, progress=job.progress)
    write_json(final / "config.json", backend.checkpoint_config(cfg, job.plan))
    return final


def write_json(file: Path, data: dict) -> None:
    """Write a JSON file; a full disk is one line."""
    try:
        file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    except OSError as err:
        raise RecoverlibError(f"writing {file}: {err.strerror or err}") from None
