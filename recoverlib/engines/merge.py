"""Merged LoRA weights (W + scale * B @ A), computed once per (base, adapter) and cached on disk.

Why: on CPU, serving an adapter through vLLM's LoRA path costs about 3x the base model's speed, while a merged
adapter runs at the base's speed. An engine swaps the merged tensors of the modules an adapter touches into
the running model, generates, and swaps the base tensors back.

Two kinds of cache entry under ``<cache>/<key>/`` (key = fingerprints of base and adapter + dtype):

- ``merged.safetensors``: only the touched modules, under checkpoint names
(``model.layers.0.self_attn.q_proj.weight``).
  Made here from the safetensors files alone (no model load), for plain LoRA on ``nn.Linear`` modules; the
  arithmetic is PEFT's (``scale = lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA), and a test checks it
  against PEFT's ``merge_and_unload``.
- ``model/``: a complete HF model folder, made by PEFT's ``merge_and_unload`` for adapters on parameters
  (fused MoE experts), which a running vLLM engine on CPU cannot take by swapping.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from recoverlib.adapters import AdapterInfo, swap_merge_problem
from recoverlib.cache import cache_dir
from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import folder_fingerprint

log = logging.getLogger("recoverlib")

MERGE_FORMAT = 1  # bump when the cached files' meaning changes


def default_cache_dir() -> Path:
    """The merged-weights cache: ``<cache root>/merged`` (see :mod:`recoverlib.cache`)."""
    return cache_dir("merged")


def fingerprint(folder: Path, full: bool) -> str:
    """sha256 over a folder's config and weight files (:func:`folder_fingerprint` of its ``.json`` and
    ``.safetensors``, the files a merge reads)."""
    return folder_fingerprint(folder, full, (".json", ".safetensors"))


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


def _lora_scale(cfg: dict, module: str) -> float:
    short = module.split(".")
    rank = next(
        (v for k, v in cfg.get("rank_pattern", {}).items() if k in short or module.endswith(k)), cfg["r"]
    )
    alpha = next(
        (v for k, v in cfg.get("alpha_pattern", {}).items() if k in short or module.endswith(k)),
        cfg["lora_alpha"],
    )
    return alpha / (rank**0.5 if cfg.get("use_rslora") else rank)


def merge_linear_lora(base: Path, adapter: AdapterInfo, dtype) -> dict:
    """``{checkpoint name: merged weight}`` for every Linear module the adapter touches, in ``dtype``.

    Computed in float32 from the base's and adapter's safetensors: ``W + scale * B @ A``.
    """
    from safetensors.torch import load_file

    problem = swap_merge_problem(adapter)
    if problem:
        raise RecoverlibError(problem)
    cfg = adapter.config
    lora = load_file(adapter.path / "adapter_model.safetensors")
    names = {f"{m}.weight" for m in adapter.target_modules}
    base_w = read_tensors(base, names)
    merged = {}
    for module in adapter.target_modules:
        a = lora[f"base_model.model.{module}.lora_A.weight"].float()
        b = lora[f"base_model.model.{module}.lora_B.weight"].float()
        w = base_w[f"{module}.weight"]
        merged[f"{module}.weight"] = (w.float() + _lora_scale(cfg, module) * (b @ a)).to(dtype or w.dtype)
    return merged


def merge_full_model(base: Path, adapter: AdapterInfo, out: Path, dtype) -> Path:
    """A complete merged HF model folder through PEFT (any adapter PEFT can merge, experts included)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
        merge_full_model(self.base, adapter, tmp, dtype)
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
