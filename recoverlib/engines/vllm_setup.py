"""Everything ``VLLMEngine`` decides before vLLM starts, as one pure function of (settings, device, adapters,
model).

:func:`plan_vllm` turns an :class:`EngineConfig`, the :class:`Device` vLLM will use, the checked adapters and
what was read from the model folder (:class:`ModelFacts`) into a :class:`VllmSetup`: how adapters are served
(dynamic LoRA or merged weights, and which adapters need a whole merged checkpoint in a fresh engine), the
dtype, the context, whether base requests must be batched apart from adapter requests, and the exact
``vllm.LLM`` arguments and environment. Every setting the device or vLLM cannot honour is a one-line error
here; the engine only carries the plan out, and tests call this function directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from recoverlib.adapter_layouts import converts_parameters
from recoverlib.adapters import AdapterInfo, swap_merge_problem
from recoverlib.engines.base import DEFAULT_CONTEXT_CAP, EngineConfig, resolve_max_model_len
from recoverlib.engines.device import Device, check_vllm_settings, cpu_thread_binding, resolve_dtype
from recoverlib.engines.lora_mode import LoraCosts, LoraWorkload, choose_lora_mode, merge_blocker
from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import checkpoint_dtype, read_model_config
from recoverlib.quant.meta import is_quantized

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks
# recoverlib's vLLM plugin cures (recoverlib.vllm_plugin): keep the CPU MoE kernel with attention LoRA; one
# LoRA product per adapter, nothing for base requests (vLLM's CPU path applies the last adapter to them)
MOE_CURE, GROUPED_CURE = "vllm-cpu-moe-kernel", "vllm-grouped-lora"
CPU_MAX_SEQS, CPU_BATCHED_TOKENS, GPU_BATCHED_TOKENS = 2048, 65536, 8192
# KV-cache block on a CPU: vLLM's CPU default is 128 tokens, and its prefix cache shares whole blocks only, so
# each of a request's n samples recomputes the prompt's last partial block (up to 127 tokens); 32 is the CPU
# attention's smallest (benchmarks/results/ensemble_speed_*.md). GPUs keep vLLM's own (16).
CPU_BLOCK_SIZE = 32


@dataclass(frozen=True)
class ModelFacts:
    """What a model folder says before any engine starts: quantized or not, stored dtype, native context."""

    path: Path
    quantized: bool = False
    stored_dtype: str | None = None
    native_max_len: int = DEFAULT_CONTEXT_CAP
    moe: bool = True  # a mixture of experts (vLLM's LoRA picks its MoE kernel by it)

    @classmethod
    def read(cls, path: Path) -> ModelFacts:
        cfg = read_model_config(path)
        native = int(cfg.get("max_position_embeddings", DEFAULT_CONTEXT_CAP))
        return cls(Path(path), is_quantized(path), checkpoint_dtype(path), native,
                   moe=bool(cfg.get("num_local_experts") or cfg.get("num_experts")))


@dataclass(frozen=True)
class VllmSetup:
    """How one ``VLLMEngine`` serves its model and adapters (see :func:`plan_vllm`)."""

    lora_mode: str  # dynamic (LoRA requests mixed in one batch) or merged (weights swapped per adapter)
    dtype: str
    max_model_len: int
    restart_adapters: frozenset[str] = frozenset()  # served from a whole merged checkpoint in a fresh engine
    separate_base: bool = False  # base requests in a generate call of their own (grouped-LoRA cure absent)
    llm_kwargs: Mapping[str, object] = field(default_factory=dict)  # vllm.LLM(model=..., **llm_kwargs)
    env: Mapping[str, str] = field(default_factory=dict)  # environment while the engine starts


def lora_rank_slot(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds ``rank``."""
    for slot in VLLM_LORA_RANKS:
        if slot >= rank:
            return slot
    raise RecoverlibError(f"LoRA rank {rank} exceeds vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


def needs_fresh_engine(info: AdapterInfo, device: Device) -> bool:
    """Merged mode: a whole merged checkpoint in a fresh engine, where swapping tensors cannot serve ``info``:
    adapters the shared rule cannot merge from tensors (DoRA...), and LoRA on the experts or the router, which
    vLLM's CPU MoE layer post-processes once at load (a swap into a running MoE layer is not done on a GPU
    either: untested there)."""
    return swap_merge_problem(info) is not None or info.touches_moe


# adapter_config.json settings vLLM 0.32 refuses when it loads an adapter (vllm/lora/peft_helper.py)
VLLM_REFUSES = {"use_dora": "DoRA", "lora_bias": "a LoRA bias", "modules_to_save": "modules_to_save",
                "target_parameters": "LoRA on parameters"}


def dynamic_problem(adapters: Mapping[str, AdapterInfo], device: Device) -> str | None:
    """Why the adapters cannot be served as LoRA by vLLM here: what vLLM refuses in any adapter (DoRA...), and
    on CPU LoRA on the experts or router (its CPU LoRA ops have no fused-MoE path)."""
    for info in sorted(adapters.values(), key=lambda a: a.name):
        cfg = info.config
        converted = info.layout != "linear" and converts_parameters(cfg)  # served under published names
        refused = [what for key, what in VLLM_REFUSES.items()
                   if cfg.get(key) and not (key == "target_parameters" and converted)]
        if refused or cfg.get("bias", "none") != "none":
            return (f"adapter {info.name!r} has {(refused or ['a bias'])[0]}, which vLLM does not serve as"
                    " LoRA; use --lora-mode merged or --engine hf")
    moe = sorted(a.name for a in adapters.values() if a.touches_moe)
    if device.is_cpu and moe:
        return (
            f"adapter(s) {moe} put LoRA on MoE expert weights or the router, which vLLM's CPU LoRA path"
            " cannot serve; use --lora-mode merged or --engine hf"
        )
    return None


def vllm_lora_targets(adapters: Mapping[str, AdapterInfo]) -> list[str]:
    """vLLM's ``lora_target_modules`` for ``adapters``: its module suffixes (``qkv_proj``'s parts by their own
    names, ``experts`` for any expert projection: its Mixtral packs ``experts.E.w1/w2/w3`` into one
    ``experts`` module, which a ``w1`` target would leave without LoRA, silently; the router is ``gate``)."""
    targets = set()
    for info in adapters.values():
        for module in info.modules:
            parts = module.split(".")
            targets.add("experts" if "experts" in parts else parts[-1])
    return sorted(targets)


def vllm_merge_problem(config: EngineConfig, model: ModelFacts) -> str | None:
    """Why merged weights cannot be swapped into this engine (None when they can)."""
    blocker = merge_blocker(model.quantized, config.dequantized_merge)
    if blocker:
        return blocker
    if config.multiprocess:
        return "swapping merged weights needs the in-process engine (drop --multiprocess)"
    if config.tensor_parallel_size > 1:
        return "swapping merged weights is done in one process (use --tensor-parallel-size 1, or dynamic)"
    return None


def plan_vllm(config: EngineConfig, device: Device, adapters: Mapping[str, AdapterInfo], model: ModelFacts,
              cures: frozenset[str] = frozenset({MOE_CURE, GROUPED_CURE}), costs: LoraCosts | None = None,
              cores: Sequence[int] = (0,), preload: Mapping[str, str] | None = None) -> VllmSetup:
    """Decide how to serve ``adapters`` on ``model`` with vLLM on ``device`` (see the module docstring).

    ``cures``: the names of recoverlib's vLLM plugin cures active where the engine runs (CPU);
    ``cores``: the CPU cores this process may use (CPU tensor parallel binds ranks to them);
    ``preload``: ``LD_PRELOAD`` for the engine's own processes on a CPU (tcmalloc, libiomp5), which a process
    spawned for the multiprocess engine gets; an in-process engine runs with what this process loaded.
    """
    check_vllm_settings(config, device, len(cores))
    dtype = resolve_dtype(config.dtype, device, model.stored_dtype)
    restarts = frozenset(a.name for a in adapters.values() if needs_fresh_engine(a, device))
    work = LoraWorkload(config.expected_new_tokens or 10**7, len(adapters), len(restarts))
    dynamic = dynamic_problem(adapters, device)
    mode = choose_lora_mode(config.lora_mode, work, costs or LoraCosts(), can_dynamic=dynamic is None,
                            can_merge=vllm_merge_problem(config, model))
    if mode == "dynamic" and dynamic:
        raise RecoverlibError(dynamic)
    lora = mode == "dynamic" and bool(adapters)
    if lora and device.is_cpu and model.moe and MOE_CURE not in cures:
        raise RecoverlibError(
            "vLLM's CPU backend picks its Triton MoE kernel whenever LoRA is on, and that kernel"
            " cannot run on a CPU; recoverlib's vLLM plugin keeps the CPU kernel, and it is off"
            " here (RECOVERLIB_VLLM_PLUGIN=0, or another vLLM version): use --lora-mode merged or"
            " --engine hf"
        )
    max_len = resolve_max_model_len(config.max_model_len, model.native_max_len)
    kwargs = _llm_kwargs(config, device, adapters if lora else {}, dtype, max_len)
    env = {"VLLM_CPU_KVCACHE_SPACE": str(max(1, round(config.kv_cache_gib)))} if device.is_cpu else {}
    if not config.multiprocess:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    elif device.is_cpu and preload:
        env.update({**preload, "VLLM_WORKER_MULTIPROC_METHOD": "spawn"})  # spawn execs: LD_PRELOAD applies
    if device.is_cpu and (config.tensor_parallel_size > 1 or config.multiprocess):
        # vLLM's own binding gives a multiprocess worker all cores but one (kept for its scheduler): half the
        # compute on a 2-core machine. Every allowed core goes to the ranks; a binding the user set stays.
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_thread_binding(config.tensor_parallel_size, list(cores))
    separate = lora and device.is_cpu and GROUPED_CURE not in cures
    return VllmSetup(
        mode, dtype, max_len, restarts if mode == "merged" else frozenset(), separate, kwargs, env
    )


def _llm_kwargs(config: EngineConfig, device: Device, adapters: Mapping[str, AdapterInfo], dtype: str,
                max_len: int) -> dict:
    """``vllm.LLM`` arguments (the model path aside)."""
    kwargs: dict = {"dtype": dtype, "max_model_len": max_len, "seed": 0,
                    # chunked prefill rewinds a CPU generator for seeded requests, which CPU generators
                    # cannot do
                    "enable_chunked_prefill": False,
                    "max_num_batched_tokens": config.max_num_batched_tokens
                    or max(max_len, CPU_BATCHED_TOKENS if device.is_cpu else GPU_BATCHED_TOKENS),
                    "enforce_eager": device.is_cpu or config.enforce_eager,
                    # one worker process per rank under tensor parallel; otherwise the worker runs in the
                    # engine core
                    "distributed_executor_backend": "mp" if config.tensor_parallel_size > 1 else "uni",
                    "tensor_parallel_size": config.tensor_parallel_size}
    # On CPU a decode step costs mostly Python bookkeeping, so wide steps pay: with 2048 sequences and 64 k
    # batched tokens a 512-row prediction ran about 13 % faster than with vLLM's 256 / 8 k (tiny Mixtral).
    max_seqs = config.max_num_seqs or (CPU_MAX_SEQS if device.is_cpu else None)
    if max_seqs:
        kwargs["max_num_seqs"] = max_seqs
    if config.gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
    block = config.block_size or (CPU_BLOCK_SIZE if device.is_cpu else None)
    if block is not None:
        if device.is_cpu and block % 32:
            raise RecoverlibError(f"block size {block}: vLLM's CPU attention takes multiples of 32")
        kwargs["block_size"] = block
    if not config.custom_all_reduce:
        kwargs["disable_custom_all_reduce"] = True
    return kwargs | lora_kwargs(config, adapters)


def lora_kwargs(config: EngineConfig, adapters: Mapping[str, AdapterInfo]) -> dict:
    """vLLM's LoRA arguments for serving ``adapters`` dynamically ({} without adapters)."""
    if not adapters:
        return {}
    slot = config.max_lora_rank or lora_rank_slot(max(a.rank for a in adapters.values()))
    too_big = [
        f"{a.name} (r={a.rank})" for a in sorted(adapters.values(), key=lambda a: a.name) if a.rank > slot
    ]
    if too_big:
        raise RecoverlibError(f"adapter rank exceeds the engine's max_lora_rank {slot}: {', '.join(too_big)}")
    return {"enable_lora": True, "max_loras": min(config.max_loras or len(adapters), len(adapters)),
            "max_cpu_loras": len(adapters), "max_lora_rank": slot,
            "lora_target_modules": vllm_lora_targets(adapters)}
