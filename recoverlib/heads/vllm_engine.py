"""``vllm`` head engine: vLLM's pooling runner on the base (``convert="embed"``: the causal LM without its
vocabulary projection), last-token pooling with no activation (the raw final hidden state, as the HF engine's
decoder gives it), each head's LoRA given per request as the generation engine gives adapters.

The engine is planned like the generation engine (:func:`recoverlib.engines.vllm_setup.plan_vllm`): LoRA
served dynamically (a head's LoRA sits on attention, which vLLM's CPU LoRA serves with recoverlib's MoE-kernel
cure), what vLLM cannot serve here refused in one line first (:func:`check_vllm_serves`). It starts on the
first request, holding every head added so far; a head the running engine cannot hold (a larger rank, a
longer context, other target modules) restarts it with all of them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recoverlib.adapters import AdapterInfo, read_adapter
from recoverlib.engines.base import FROZEN_HEAP, EngineConfig
from recoverlib.engines.vllm import active_cures, import_vllm, vllm_device
from recoverlib.engines.vllm_setup import ModelFacts, VllmSetup, lora_rank_slot, plan_vllm, vllm_lora_targets
from recoverlib.engines.vllm_support import check_vllm_serves
from recoverlib.runtime import ENGINE_ENVIRON, environ

KV_CACHE_GIB = 1.0  # pooling keeps no KV cache after a request; vLLM still sizes one at start


def pooling_kwargs() -> dict:
    """``vllm.LLM`` arguments that make the causal LM return each input's last-token hidden state as is."""
    from vllm.config import PoolerConfig

    return {"runner": "pooling", "convert": "embed",
            "pooler_config": PoolerConfig(seq_pooling_type="LAST", use_activation=False)}


def plan_heads(base: Path, heads: dict[str, AdapterInfo], max_length: int, device) -> VllmSetup:
    """The vLLM setup serving ``heads`` (name -> adapter) on ``base`` for inputs up to ``max_length``."""
    # as the HF head engine computes (compute_dtype), told from vLLM's device: asking torch.cuda here would
    # put a CUDA context on GPU 0 before vLLM's workers start
    dtype = "float32" if device.is_cpu else "bfloat16"
    config = EngineConfig(dtype=dtype, lora_mode="dynamic", max_model_len=max_length,
                          kv_cache_gib=KV_CACHE_GIB)
    return plan_vllm(config, device, heads, ModelFacts.read(base), active_cures(device),
                     cores=sorted(os.sched_getaffinity(0)))


def holds(slot: int, targets: set[str], context: int, info: AdapterInfo, max_length: int) -> bool:
    """Whether an engine started with ``max_lora_rank`` ``slot``, LoRA ``targets`` and ``context`` tokens
    serves the head LoRA ``info`` on inputs of ``max_length`` (vLLM would leave a module outside ``targets``
    without its LoRA, silently)."""
    return (lora_rank_slot(info.rank) <= slot and max_length <= context
            and set(vllm_lora_targets({info.name: info})) <= targets)


class VLLMHeadEngine:
    """vLLM's pooling runner serving heads' LoRAs (see the module docstring)."""

    name = "vllm"

    def __init__(self, base: Path):
        import_vllm()
        self.base = Path(base)
        check_vllm_serves(self.base)  # quantization method, expert names, this machine's kernels
        self.device = vllm_device()
        self.heads: dict[str, AdapterInfo] = {}
        self.max_length = 0
        self._llm = None
        self._slot = 0  # the running engine's max_lora_rank
        self._targets: set[str] = set()  # and its LoRA target modules
        self._ids: dict[str, int] = {}  # vLLM caches a LoRA by its id: an id never names another head

    def add(self, name: str, folder: Path, max_length: int) -> None:
        """Serve the head LoRA in ``folder`` as ``name``; one line when vLLM cannot (checked now, before
        any request)."""
        info = read_adapter(name, folder)
        heads = {**self.heads, name: info}
        plan_heads(self.base, heads, max(self.max_length, max_length), self.device)  # refuses in one line
        if self._llm is not None and not holds(self._slot, self._targets, self.max_length, info, max_length):
            self.close()  # the running engine cannot hold it: the next request starts one that can
        self.heads, self.max_length = heads, max(self.max_length, max_length)
        self._ids.setdefault(name, len(self._ids) + 1)

    def _start(self) -> None:
        from vllm import LLM

        setup = plan_heads(self.base, self.heads, self.max_length, self.device)
        FROZEN_HEAP.hold(self)
        try:
            with ENGINE_ENVIRON.building(self), environ(**setup.env):
                self._llm = LLM(model=str(self.base), **setup.llm_kwargs, **pooling_kwargs())
        except BaseException:
            FROZEN_HEAP.release(self)
            ENGINE_ENVIRON.release(self)
            raise
        self._slot = setup.llm_kwargs["max_lora_rank"]
        self._targets = set(setup.llm_kwargs["lora_target_modules"])

    def _request(self, name: str):
        from vllm.lora.request import LoRARequest

        return LoRARequest(lora_name=name, lora_int_id=self._ids[name],
                           lora_path=str(self.heads[name].served_path("published").resolve()))

    def last_hidden(self, name: str, inputs: Sequence[Sequence[int]]) -> np.ndarray:
        """Last-token hidden states with head ``name``'s LoRA, all inputs in one vLLM call."""
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        if self._llm is None:
            self._start()
        outs = self._llm.embed([TokensPrompt(prompt_token_ids=list(x)) for x in inputs],
                               pooling_params=PoolingParams(use_activation=False),
                               lora_request=self._request(name), use_tqdm=False)
        return np.stack([np.asarray(o.outputs.embedding, dtype=np.float32) for o in outs]) if outs else \
            np.zeros((0, 0), dtype=np.float32)

    def close(self) -> None:
        if self._llm is not None:
            self._llm = None
            FROZEN_HEAP.release(self)  # what the engine held can be collected
            ENGINE_ENVIRON.release(self)
