"""Merged LoRA weights (W + scale * B @ A), computed once per (base, adapter) and cached on disk.

Why: on CPU, serving an adapter through vLLM's LoRA path costs about 3x the base model's speed, while a merged
adapter runs at the base's speed. An engine swaps the merged tensors of the modules an adapter touches into
the running model, generates, and swaps the base tensors back.

Two kinds of cache entry under ``<cache>/<key>/`` (key = fingerprints of base and adapter + dtype):

- ``merged.safetensors``: only the touched modules, under checkpoint names
  (``model.layers.0.self_attn.q_proj.weight``). Made here from the safetensors files alone (no model load);
  the arithmetic is PEFT's (``scale = lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA), and a test checks it
  against PEFT's ``merge_and_unload``.
- ``model/``: a complete HF model folder, for adapters a running engine cannot take by swapping (LoRA on
  Mixtral's experts or router, which vLLM's CPU MoE layer post-processes once at load). Made by
  :func:`merge_checkpoint` shard by shard over the base's own files, one shard in memory at a time (so it
  scales to Mixtral-8x7B's 19 shards), for every adapter whose pairs are known module by module, whatever
  PEFT layout it was written in (:mod:`recoverlib.adapter_layouts`); by PEFT's ``merge_and_unload`` (the
  whole model loaded) for the rest (DoRA, LoRA on another model's parameters).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from recoverlib.adapter_layouts import lora_scale, read_pairs
from recoverlib.adapters import AdapterInfo, swap_merge_problem
from recoverlib.cache import cache_dir, fingerprint
from recoverlib.errors import RecoverlibError
from recoverlib.quant.checkpoint import INDEX_FILE, Checkpoint, expert_layout, save_tensors

log = logging.getLogger("recoverlib")

MERGE_FORMAT = 2  # bump when the cached files' meaning changes


def default_cache_dir() -> Path:
    """The merged-weights cache: ``<cache root>/merged`` (see :mod:`recoverlib.cache`)."""
    return cache_dir("merged")


def _weight_files(model: Path) -> list[Path]:
    files = sorted(model.glob("*.safetensors"))
    if not files:
        raise RecoverlibError(f"{model}: no safetensors weights to merge into")
    return files


def read_tensors(model: Path, names: set[str]) -> dict:
    """The named tensors of a safetensors model folder (only those are read)."""
    from safetensors import safe_open

    out = {}
    for file in _weight_files(model):
        with safe_open(file, framework="pt") as fh:
            for key in names.intersection(fh.keys()):
                out[key] = fh.get_tensor(key)
    missing = names - set(out)
    if missing:
        raise RecoverlibError(f"{model}: base has no tensor {sorted(missing)[0]} that the adapter changes")
    return out


def merge_linear_lora(base: Path, adapter: AdapterInfo, dtype) -> dict:
    """``{checkpoint name: merged weight}`` for every module the adapter touches, in ``dtype``.

    Computed in float32 from the base's and adapter's safetensors: ``W + scale * B @ A``.
    """
    problem = swap_merge_problem(adapter)
    if problem:
        raise RecoverlibError(problem)
    base_w = read_tensors(base, {f"{m}.weight" for m in adapter.pieces})
    deltas = lora_deltas(adapter)
    return {name: _merged(w, deltas[name], dtype) for name, w in base_w.items()}


def lora_deltas(adapter: AdapterInfo) -> dict:
    """``{checkpoint weight name: (scale, B, A)}`` for every LoRA pair of ``adapter``, as stored."""
    cfg = adapter.config
    return {f"{module}.weight": (lora_scale(cfg, adapter.pieces[module].source), b, a)
            for module, (a, b) in read_pairs(adapter.path, adapter.pieces).items()}


def _merged(weight, delta, dtype):
    scale, b, a = delta
    return (weight.float() + scale * (b.float() @ a.float())).to(dtype or weight.dtype)


def merge_checkpoint(base: Path, adapter: AdapterInfo, out: Path, dtype) -> Path:
    """A complete merged model folder in ``out``, written shard by shard with the base's shard names: each
    tensor the adapter changes becomes ``W + scale * B @ A`` (float32 arithmetic), every floating tensor is
    stored in ``dtype``; the other files (config, tokenizer) are copied. One base shard in memory at a
    time."""
    problem = swap_merge_problem(adapter)
    if problem:
        raise RecoverlibError(problem)
    source = Checkpoint.open(base)
    deltas = lora_deltas(adapter)
    missing = sorted(set(deltas) - set(source.files))
    if missing:
        raise RecoverlibError(f"{base}: base has no tensor {missing[0]} that adapter {adapter.name!r} changes"
                              f" (its checkpoint names experts {expert_layout(source.files)})")
    out.mkdir(parents=True, exist_ok=True)
    weight_map, total = {}, 0
    for file in sorted(set(source.files.values())):
        names = sorted(n for n, f in source.files.items() if f == file)
        tensors = source.read(names)
        for name in names:
            t = tensors[name]
            if name in deltas:
                t = _merged(t, deltas[name], dtype)
            elif dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            tensors[name] = t
            total += t.numel() * t.element_size()
            weight_map[name] = file.name
        save_tensors(tensors, out / file.name)
        del tensors
    for other in sorted(Path(base).iterdir()):
        if other.is_file() and other.suffix != ".safetensors" and other.name != INDEX_FILE:
            shutil.copy2(other, out / other.name)
    if (Path(base) / INDEX_FILE).is_file():
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    if dtype is not None:  # the config says what the shards hold
        cfg = json.loads((out / "config.json").read_text())
        cfg["dtype"] = str(dtype).removeprefix("torch.")
        cfg.pop("torch_dtype", None)
        (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def merge_full_model(base: Path, adapter: AdapterInfo, out: Path, dtype) -> Path:
    """A complete merged HF model folder through PEFT (any adapter PEFT can merge); loads the whole model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if adapter.layout != "linear":  # PEFT's LoRA on fused experts takes no DoRA, bias, ... (ParamWrapper)
        raise RecoverlibError(
            f"{swap_merge_problem(adapter)}, and it puts LoRA on Mixtral's experts, which PEFT merges only as"
            " plain LoRA: serve it with --engine hf --lora-mode dynamic"
        )

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, use_safetensors=True)
    model = PeftModel.from_pretrained(model, str(adapter.path)).merge_and_unload()
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


class MergeCache:
    """Merged weights per (base, adapter, dtype) on disk; a second request reads them back instead of
    merging."""

    def __init__(self, base: Path, root: Path | None = None):
        self.base = Path(base)
        self.root = Path(root) if root else default_cache_dir()
        self._base_print = fingerprint(self.base, full=False)

    def key(self, adapter: AdapterInfo, dtype) -> str:
        parts = f"{MERGE_FORMAT}|{self._base_print}|{fingerprint(adapter.path, full=True)}|{dtype}"
        return hashlib.sha256(parts.encode()).hexdigest()[:32]

    def tensors(self, adapter: AdapterInfo, dtype) -> dict:
        """Merged tensors of the modules ``adapter`` touches (checkpoint names), merged on first request."""
        from safetensors.torch import load_file, save_file

        folder = self.root / self.key(adapter, dtype)
        file = folder / "merged.safetensors"
        if file.is_file():
            return load_file(file)
        log.info("merging adapter %s into %s (cached in %s)", adapter.name, self.base, folder)
        merged = merge_linear_lora(self.base, adapter, dtype)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".merged.{os.getpid()}.tmp"
        save_file({k: v.contiguous() for k, v in merged.items()}, tmp)
        os.replace(tmp, file)
        self._write_meta(folder, adapter, dtype)
        return merged

    def model_folder(self, adapter: AdapterInfo, dtype) -> Path:
        """A complete merged model folder (for adapters a running engine cannot take by swapping)."""
        folder = self.root / self.key(adapter, dtype)
        out = folder / "model"
        if (out / "config.json").is_file():
            return out
        log.info("merging adapter %s into a full copy of %s (cached in %s)", adapter.name, self.base, out)
        tmp = folder / f".model.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        merge = merge_full_model if swap_merge_problem(adapter) else merge_checkpoint
        merge(self.base, adapter, tmp, dtype)
        os.replace(tmp, out)
        self._write_meta(folder, adapter, dtype)
        return out

    def _write_meta(self, folder: Path, adapter: AdapterInfo, dtype) -> None:
        meta = {"base": str(self.base.resolve()), "adapter": str(adapter.path.resolve()), "dtype": str(dtype)}
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))


@contextmanager
def serving_merged(cache: MergeCache, info: AdapterInfo, dtype, whole: bool,
                   restart: Callable[[Path], AbstractContextManager], load: Callable[[dict], None],
                   read_base: Callable[[set[str]], dict]):
    """Hold ``info``'s merged weights in a running model while generating: the one way both engines do it.

    ``whole``: the adapter cannot be swapped tensor by tensor (see the engines' rules), so ``restart(folder)``
    serves a whole merged checkpoint. Otherwise ``load(tensors)`` swaps the merged tensors of the touched
    modules in, and the base tensors (``read_base(names)``, read before the swap) are loaded back afterwards.
    """
    if whole:
        with restart(cache.model_folder(info, dtype)):
            yield
        return
    merged = cache.tensors(info, dtype)
    base = read_base(set(merged))
    load(merged)
    try:
        yield
    finally:
        load(base)
