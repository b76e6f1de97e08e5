"""The engine interface: prompts in, n sampled texts per (prompt, adapter) out.

An engine never sees CSVs or rows: it gets rendered prompt strings and adapter names, and returns raw
generations (the pipeline cleans and combines them). :class:`Engine` assumes nothing about where the model
runs (an engine may be a client of a server); :class:`LocalEngine` is the base of the engines that load a
model folder here (vLLM in-process, transformers), whose adapters are checked against the base
(:func:`recoverlib.adapters.check_adapters`) before any engine starts.
"""

from __future__ import annotations

import gc
import logging
import weakref
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from recoverlib.adapters import AdapterInfo, check_adapters
from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import require_model_folder
from recoverlib.settings import setting

log = logging.getLogger("recoverlib")

# adapter name (None = the base model) -> one list per prompt -> n generated texts
Samples = dict[str | None, list[list[str]]]
# Either one prompt list shared by every adapter, or a prompt list per adapter (primed adapters differ).
Prompts = Sequence[str] | Mapping[str | None, Sequence[str]]
@dataclass(frozen=True)
class SamplingConfig:
    """How to sample. ``temperature == 0`` is greedy (then ``n`` copies of the greedy text are pointless)."""

    samples: int = 1  # sampled texts per (prompt, adapter): the CLI's --samples
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 32
    seed: int = 0
    ignore_eos: bool = False  # generate exactly max_new_tokens (benchmarks: equal work across engines)

    def __post_init__(self):
        if self.samples < 1:
            raise RecoverlibError(f"samples must be >= 1 (got {self.samples})")
        if not self.temperature >= 0:  # also refuses NaN
            raise RecoverlibError(f"temperature must be >= 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            raise RecoverlibError(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.max_new_tokens < 1:
            raise RecoverlibError(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def draws(self) -> int:
        """Texts an engine generates per prompt: one when greedy (``repeat_greedy`` copies it), else
        ``samples``."""
        return 1 if self.greedy else self.samples

    def request_seed(self, prompt_index: int, adapter_index: int) -> int:
        """A seed per (prompt, adapter), so a request's samples do not depend on how requests are batched."""
        return int(np.random.SeedSequence([self.seed, prompt_index, adapter_index]).generate_state(1)[0])


LORA_MODES = ("dynamic", "merged", "auto")
DTYPES = ("auto", "bfloat16", "float16", "float32")  # names both engines read the same way (auto: by device)


@dataclass(frozen=True)
class EngineConfig:
    """Engine settings with defaults that work for the tiny model on a small CPU.

    ``lora_mode``: ``dynamic`` serves adapters as LoRA (vLLM mixes them in one batch); ``merged`` swaps each
    adapter's merged weights (cached on disk) into the running model, one adapter after another; ``auto``
    picks.
    """

    dtype: str = setting("auto", choices=DTYPES,
                         help="compute dtype; auto: bf16 where the device has it, fp16 on GPUs before Ampere")
    max_model_len: int | None = setting(None, help="context tokens (default: the model's, at most 4096)")
    batch_size: int = setting(16, help="hf engine: prompts per generate call")
    max_lora_rank: int | None = setting(
        None, help="vllm: LoRA rank slot (default: the smallest vLLM size that holds every adapter)"
    )
    kv_cache_gib: float = setting(1.0, help="vllm on CPU: KV-cache space in GiB")
    multiprocess: bool = setting(False, help="vllm: its multiprocess engine core (starts in ~30 s, not ~3 s)")
    max_num_seqs: int | None = setting(
        None,
        help="vllm: sequences per step (default: 2048 on CPU, where per-step"
        " overhead dominates; vLLM's on GPU)",
    )
    max_num_batched_tokens: int | None = setting(
        None, help="vllm: tokens per step (default: the context, at least 65536 on CPU and 8192 on GPU)"
    )
    block_size: int | None = setting(None, help="vllm: KV-cache block size in tokens (default: 32 on CPU,"
                                                " where it takes multiples of 32; vLLM's own 16 on GPU)")
    lora_mode: str = setting(
        "auto",
        choices=LORA_MODES,
        help="adapters as LoRA in one batch (dynamic), as merged weights one after another"
        " (merged), or chosen by cost (auto)",
    )
    merge_cache: str | None = setting(None, help="merged-weights cache folder (default: <cache root>/merged)")
    dequantized_merge: bool = setting(False, help="allow merging adapters into a quantized base (not exact)")
    expected_new_tokens: int | None = setting(
        None, cli=False, help="workload hint for lora mode auto (None: large)"
    )
    tensor_parallel_size: int = setting(
        1, help="vllm: ranks the model is split over (GPUs; processes on CPU)"
    )
    gpu_memory_utilization: float | None = setting(
        None, help="vllm: fraction of each GPU to use (default vLLM's 0.9)"
    )
    max_loras: int | None = setting(
        None,
        help="vllm: adapters resident on the device at once (default: all); the others wait in CPU memory",
    )
    enforce_eager: bool = setting(
        False, help="vllm: no CUDA graphs (less memory, slower decode); always on CPU"
    )
    custom_all_reduce: bool = setting(
        True, help="vllm: its custom all-reduce kernel under tensor parallel (off cures hangs on T4 pairs)"
    )

    def __post_init__(self):
        if self.lora_mode not in LORA_MODES:
            raise RecoverlibError(f"lora mode {self.lora_mode!r}: choose one of {', '.join(LORA_MODES)}")
        if self.dtype not in DTYPES:
            raise RecoverlibError(f"dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        at_least_one = {"batch_size": self.batch_size, "max_model_len": self.max_model_len,
                        "max_lora_rank": self.max_lora_rank, "max_num_seqs": self.max_num_seqs}
        for name, value in at_least_one.items():
            if value is not None and value < 1:
                raise RecoverlibError(f"{name} must be >= 1 (got {value})")
        if not self.kv_cache_gib > 0:
            raise RecoverlibError(f"kv_cache_gib must be > 0 (got {self.kv_cache_gib})")
        if self.block_size is not None and (self.block_size < 16 or self.block_size % 16):
            raise RecoverlibError(f"block_size must be a multiple of 16 (32 on CPU), got {self.block_size}")
        if self.tensor_parallel_size < 1:
            raise RecoverlibError(f"tensor parallel size must be >= 1 (got {self.tensor_parallel_size})")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise RecoverlibError(
                f"gpu memory utilization is a fraction in (0, 1] (got {self.gpu_memory_utilization})"
            )
        if self.max_loras is not None and self.max_loras < 1:
            raise RecoverlibError(f"max_loras must be >= 1 (got {self.max_loras})")
        if (
            self.max_num_batched_tokens
            and self.max_model_len
            and self.max_num_batched_tokens < self.max_model_len
        ):
            raise RecoverlibError(
                f"max_num_batched_tokens {self.max_num_batched_tokens} is below max_model_len"
                f" {self.max_model_len} (prompts are not split): raise it or lower the context"
            )


# Named machine settings; ``EngineConfig`` fields they set (explicit CLI values override them). kaggle-t4x2:
# Kaggle's 2x T4 (15 GB each, compute capability 7.5): fp16, both GPUs, custom all-reduce off (reported hangs,
# vLLM issues 14449 and 9046); 0.95 of each GPU and a 2048-token context leave Mixtral-8x7B GPTQ-4 with four
# rank-16 adapters about 9,400 KV-cache tokens per the serving planner (README, "Will it fit?"); eager mode
# and 2048 batched tokens keep CUDA graphs and activations small (0.9 of each GPU would not fit the model).
ENGINE_PRESETS: Mapping[str, Mapping[str, object]] = MappingProxyType(
    {
        "kaggle-t4x2": MappingProxyType(
            {
                "tensor_parallel_size": 2,
                "dtype": "float16",
                "custom_all_reduce": False,
                "enforce_eager": True,
                "gpu_memory_utilization": 0.95,
                "max_model_len": 2048,
                "max_num_batched_tokens": 2048,
                "max_num_seqs": 32,
            }
        ),
    }
)


def engine_config_with(preset: str | None = None, **explicit) -> EngineConfig:
    """An :class:`EngineConfig` from a named preset, with ``explicit`` fields (those not ``None``) on top."""
    fields = {}
    if preset is not None:
        if preset not in ENGINE_PRESETS:
            raise RecoverlibError(f"preset {preset!r}: choose one of {', '.join(ENGINE_PRESETS)}")
        fields.update(ENGINE_PRESETS[preset])
    fields.update({k: v for k, v in explicit.items() if v is not None})
    return EngineConfig(**fields)


# tokens; recovery prompts are far shorter, and a long context costs KV-cache memory
DEFAULT_CONTEXT_CAP = 4096


def resolve_max_model_len(requested: int | None, native: int) -> int:
    """The context an engine uses: ``requested``, else the model's own capped at 4096 (said when it caps)."""
    if requested is not None:
        return min(requested, native)
    if native > DEFAULT_CONTEXT_CAP:
        log.warning("context capped at %d tokens (the model allows %d); set --max-model-len to change it",
                    DEFAULT_CONTEXT_CAP, native)
    return min(DEFAULT_CONTEXT_CAP, native)


def decode_completions(tokenizer, token_ids) -> list[str]:
    """Texts of generated token ids (one list per sample), special tokens dropped.

    A sample cut by ``max_new_tokens`` inside a multi-byte character would end in U+FFFD; those bytes are
    withheld, as vLLM's incremental detokenizer does, so both engines return the same text.
    """
    return [t.rstrip("\ufffd") for t in tokenizer.batch_decode(token_ids, skip_special_tokens=True)]


class Engine(ABC):
    """Generates ``n`` samples per (prompt, adapter). Registered by :attr:`name`
    (:mod:`recoverlib.engines.registry`).

    ``adapters``: name -> :class:`~recoverlib.adapters.AdapterInfo` (its prime and recovery prompt kind
    matter to the pipeline); ``config``: an instance of :attr:`config_type`, the engine's own settings.
    """

    name: ClassVar[str]
    config_type: ClassVar[type] = EngineConfig
    # Rows per generate call when predicting (samples are saved after each): as many as keep the engine busy.
    chunk_rows: ClassVar[int] = 64
    adapters: Mapping[str, AdapterInfo]

    @classmethod
    def samples_kind(cls, config, sampling: SamplingConfig, chunk_rows: int) -> str:
        """What, besides the model, adapters and sampling settings, decides this engine's samples (pure;
        recorded in the samples file, so ``--resume`` never mixes two kinds): by default the engine's
        name. An engine that seeds a request or batch of rows together names its size too."""
        return cls.name

    @property
    @abstractmethod
    def tokenizer(self): ...

    @property
    @abstractmethod
    def max_model_len(self) -> int: ...

    @abstractmethod
    def generate(self, prompts: Prompts, sampling: SamplingConfig, adapters: Sequence[str | None],
                 keys: Sequence[int] | None = None) -> Samples:
        """For each adapter name (``None`` = base), ``n`` texts per prompt, continuation only, special tokens
        removed.

        ``prompts`` is one list for every adapter, or a mapping adapter -> list (same length for each).
        ``keys``: one int per prompt that seeds it (default: its position); the pipeline passes each row's
        position in the input, so a row's samples do not depend on which call or chunk serves it.
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

    @staticmethod
    def prompt_keys(keys: Sequence[int] | None, n: int) -> Sequence[int]:
        """The seed keys of ``n`` prompts: ``keys`` (checked) or their positions."""
        if keys is None:
            return range(n)
        if len(keys) != n:
            raise ValueError(f"{len(keys)} keys for {n} prompts")
        return keys

    def adapter_index(self, adapter: str | None) -> int:
        """0 for the base, 1.. for adapters in name order (stable across engines, used to derive seeds)."""
        return 0 if adapter is None else sorted(self.adapters).index(adapter) + 1


class LocalEngine(Engine):
    """An engine that loads an HF model folder in this process; adapters are PEFT folders checked against
    it."""

    def __init__(self, model: str | Path, adapters: Mapping[str, str | Path] | None = None,
                 config: EngineConfig | None = None):
        self.model_path = require_model_folder(model)
        self.config = config or self.config_type()
        self.adapters = {a.name: a for a in check_adapters(self.model_path, adapters or {})}


def repeat_greedy(texts: Sequence[str], sampling: SamplingConfig) -> list[str]:
    """A prompt's samples: greedy decoding ran once (every sample would be the same), so its text is
    repeated."""
    return list(texts) * sampling.samples if sampling.greedy else list(texts)


class FrozenHeap:
    """``gc.freeze()`` for the life of the engines that need it. The freeze is process-wide, so it is undone
    only when the last holder lets go (an engine closing must not unfreeze another live engine's heap).

    vLLM collects garbage several times while it builds an engine, then freezes the heap (its
    ``freeze_gc_heap``); freezing first makes those collections skip the ~million objects the imports made
    (in-process start on the tiny model: 3.6 s -> 2.0 s). Unfreezing when the last engine closes lets what
    the engines held be collected.
    """

    def __init__(self):
        self._holders: weakref.WeakSet = weakref.WeakSet()

    def hold(self, holder) -> None:
        gc.freeze()
        self._holders.add(holder)

    def release(self, holder) -> None:
        self._holders.discard(holder)
        if not self._holders:
            gc.unfreeze()
        gc.collect()


# The one process-wide freeze (gc's permanent generation is process state, so its holders are too).
FROZEN_HEAP = FrozenHeap()
