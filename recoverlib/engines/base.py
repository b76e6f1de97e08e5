"""The engine interface: prompts in, n sampled texts per (prompt, adapter) out.

An engine never sees CSVs or rows: it gets rendered prompt strings and adapter names, and returns raw
generations (the pipeline cleans and combines them). Adapters are checked against the base once, here,
before any engine starts, so a bad adapter fails in one line instead of deep inside vLLM or PEFT.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from recoverlib.errors import RecoverlibError

# adapter name (None = the base model) -> one list per prompt -> n generated texts
Samples = dict[str | None, list[list[str]]]
# Either one prompt list shared by every adapter, or a prompt list per adapter (primed adapters differ).
Prompts = Sequence[str] | Mapping[str | None, Sequence[str]]
# Written by recoverlib's trainer beside a PEFT adapter: {"prime": "Rewrite", ...}
ADAPTER_META = "recoverlib_adapter.json"
# Name parts that mark MoE expert weights (Mixtral's w1/w2/w3, transformers 5's fused experts, Qwen-style MoE).
EXPERT_MARKERS = ("experts", "block_sparse_moe", "w1", "w2", "w3", "gate_up_proj")


def names_expert_weights(module_names) -> bool:
    """True if any dotted module name has a part that marks an MoE expert weight."""
    return any(part in EXPERT_MARKERS for name in module_names for part in name.split("."))


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample. ``temperature == 0`` is greedy (then ``n`` copies of the greedy text are pointless)."""

    n: int = 1
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 32
    seed: int = 0
    ignore_eos: bool = False  # generate exactly max_new_tokens (benchmarks: equal work across engines)

    def __post_init__(self):
        if self.n < 1:
            raise RecoverlibError(f"samples must be >= 1 (got {self.n})")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise RecoverlibError(f"bad sampling: temperature {self.temperature}, top_p {self.top_p}")
        if self.max_new_tokens < 1:
            raise RecoverlibError(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def request_seed(self, prompt_index: int, adapter_index: int) -> int:
        """A seed per (prompt, adapter), so a request's samples do not depend on how requests are batched."""
        return int(np.random.SeedSequence([self.seed, prompt_index, adapter_index]).generate_state(1)[0])


LORA_MODES = ("dynamic", "merged", "auto")


@dataclass(frozen=True)
class EngineConfig:
    """Engine settings with defaults that work for the tiny model on a small CPU.

    ``lora_mode``: ``dynamic`` serves adapters as LoRA (vLLM mixes them in one batch); ``merged`` swaps each
    adapter's merged weights (cached on disk) into the running model, one adapter after another; ``auto`` picks.
    """

    dtype: str = "bfloat16"
    max_model_len: int | None = None  # None: the model's own, capped at 4096
    batch_size: int = 16  # HF engine: prompts per generate call
    max_lora_rank: int | None = None  # vLLM: None = smallest supported size >= the largest adapter rank
    kv_cache_gib: float = 1.0  # vLLM on CPU: KV cache size
    in_process: bool = True  # vLLM: in-process engine core (about 3 s to start instead of about 30 s)
    # vLLM: sequences per step (None: vLLM's default on GPU; 2048 on CPU, where per-step overhead dominates)
    max_num_seqs: int | None = None
    lora_mode: str = "auto"
    merge_cache: str | None = None  # merged-weights cache folder (None: $RECOVERLIB_CACHE/merged or ~/.cache)
    dequantized_merge: bool = False  # allow merging into a quantized base (not exact)
    expected_new_tokens: int | None = None  # workload hint for lora_mode auto (None: a large job)

    def __post_init__(self):
        if self.lora_mode not in LORA_MODES:
            raise RecoverlibError(f"lora mode {self.lora_mode!r}: choose one of {', '.join(LORA_MODES)}")


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter folder holds, read from its config and tensors."""

    name: str
    path: Path
    rank: int
    target_modules: tuple[str, ...]  # module names that carry LoRA weights (e.g. "model.layers.0.self_attn.q_proj")
    prime: str = ""  # opening every prediction of this adapter starts with (see RecoveryTemplate.render)

    @property
    def targets_experts(self) -> bool:
        return names_expert_weights(self.target_modules)


def read_adapter(name: str, path: str | Path) -> AdapterInfo:
    """Read and check one PEFT LoRA folder; raise a one-line error for a missing or malformed one."""
    path = Path(path)
    if not path.is_dir():
        raise RecoverlibError(f"adapter {name!r}: no such folder {path}")
    cfg_file = path / "adapter_config.json"
    if not cfg_file.is_file():
        raise RecoverlibError(f"adapter {name!r}: {path} is not a PEFT adapter folder (no adapter_config.json)")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise RecoverlibError(f"adapter {name!r}: peft_type {cfg.get('peft_type')} is not LoRA")
    modules = tuple(sorted({_module_of(k) for k in _tensor_shapes(name, path)}))
    meta_file = path / ADAPTER_META
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return AdapterInfo(name=name, path=path, rank=int(cfg["r"]), target_modules=modules, prime=meta.get("prime", ""))


def _tensor_shapes(name: str, path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    file = path / "adapter_model.safetensors"
    if not file.is_file():
        raise RecoverlibError(f"adapter {name!r}: {path} has no adapter_model.safetensors")
    with safe_open(file, framework="pt") as fh:
        return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118 (safe_open has no iter)


def _module_of(key: str) -> str:
    """``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` -> ``model.layers.0.self_attn.q_proj``."""
    key = key.removeprefix("base_model.model.")
    # PEFT nests one ParamWrapper per target parameter: "mlp.experts.base_layer.lora_A" is "mlp.experts" too
    return key.split(".lora_", 1)[0].replace(".base_layer", "")


def check_adapters(base: str | Path, adapters: Mapping[str, str | Path]) -> list[AdapterInfo]:
    """Read every adapter and check its LoRA shapes against the base model's modules (built on the meta device)."""
    infos = [read_adapter(n, p) for n, p in adapters.items()]
    if not infos:
        return infos
    modules = _base_linear_shapes(base)
    for info in infos:
        for key, shape in _tensor_shapes(info.name, info.path).items():
            mod = _module_of(key)
            if mod not in modules:
                if ".lora_" in key and not key.endswith(("lora_A.weight", "lora_B.weight")):
                    continue
                raise RecoverlibError(f"adapter {info.name!r}: base model has no module {mod} (adapter for another model?)")
            in_f, out_f = modules[mod]
            want = (info.rank, in_f) if ".lora_A." in key else (out_f, info.rank)
            if modules[mod] != (None, None) and tuple(shape) != want:
                raise RecoverlibError(
                    f"adapter {info.name!r}: {key} has shape {tuple(shape)} but the base needs {want} (adapter for another model?)"
                )
    return infos


def _base_linear_shapes(base: str | Path) -> dict[str, tuple[int | None, int | None]]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes: dict[str, tuple[int | None, int | None]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            shapes[name] = (mod.in_features, mod.out_features)
        elif name:
            shapes.setdefault(name, (None, None))  # LoRA on parameters (fused experts): shape not checked here
    return shapes


def decode_completions(tokenizer, token_ids) -> list[str]:
    """Texts of generated token ids (one list per sample), special tokens dropped.

    A sample cut by ``max_new_tokens`` inside a multi-byte character would end in U+FFFD; those bytes are
    withheld, as vLLM's incremental detokenizer does, so both engines return the same text.
    """
    return [t.rstrip("\ufffd") for t in tokenizer.batch_decode(token_ids, skip_special_tokens=True)]


class Engine(ABC):
    """Generates ``n`` samples per (prompt, adapter). Subclasses register under :attr:`name`."""

    name: ClassVar[str]
    # Rows per generate call when predicting (samples are saved after each): as many as keep the engine busy.
    chunk_rows: ClassVar[int] = 64

    def __init__(self, model: str | Path, adapters: Mapping[str, str | Path] | None = None, config: EngineConfig | None = None):
        self.model_path = Path(model)
        if not (self.model_path / "config.json").is_file():
            raise RecoverlibError(f"model {self.model_path}: not an HF model folder (no config.json)")
        self.config = config or EngineConfig()
        self.adapters = {a.name: a for a in check_adapters(self.model_path, adapters or {})}

    @property
    @abstractmethod
    def tokenizer(self): ...

    @property
    @abstractmethod
    def max_model_len(self) -> int: ...

    @abstractmethod
    def generate(self, prompts: Prompts, sampling: SamplingConfig, adapters: Sequence[str | None]) -> Samples:
        """For each adapter name (``None`` = base), ``n`` texts per prompt, continuation only, special tokens removed.

        ``prompts`` is one list for every adapter, or a mapping adapter -> list (same length for each).
        """

    @abstractmethod
    def close(self) -> None:
        """Free the model; the engine cannot be used afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _requests(self, prompts: Prompts, adapters: Sequence[str | None]) -> dict[str | None, Sequence[str]]:
        """Check the adapter names and give each its prompt list."""
        unknown = [a for a in adapters if a is not None and a not in self.adapters]
        if unknown:
            raise RecoverlibError(f"unknown adapter(s) {unknown}; this engine has {sorted(self.adapters)}")
        if isinstance(prompts, Mapping):
            missing = [a for a in adapters if a not in prompts]
            if missing:
                raise ValueError(f"no prompts given for adapter(s) {missing}")
            return {a: prompts[a] for a in adapters}
        return dict.fromkeys(adapters, prompts)

    def adapter_index(self, adapter: str | None) -> int:
        """0 for the base, 1.. for adapters in name order (stable across engines, used to derive seeds)."""
        return 0 if adapter is None else sorted(self.adapters).index(adapter) + 1
