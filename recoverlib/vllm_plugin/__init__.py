"""recoverlib's vLLM plugin (entry point ``vllm.general_plugins``): multi-LoRA on MoE models on CPU.

Two cures, both active on the CPU platform only:

1. **MoE kernel.** vLLM chooses its fused-MoE kernel by "is LoRA enabled at all"
   (``FusedMoEConfig.is_lora_enabled``), not by which modules the adapters touch. On CPU that selects the
   Triton MoE kernel, which cannot run there, so any LoRA on a Mixtral fails at its first forward. When the
   engine's LoRA target modules are known and none is an expert weight, the MoE layers have no LoRA to apply
   and keep the ordinary CPU kernel. Expert-targeting adapters are left alone (vLLM's CPU punica ops cannot
   run them; recoverlib's VLLMEngine refuses them before the engine starts).
2. **Base requests in a mixed batch.** A request without an adapter has LoRA index -1; the CPU punica ops
   gather ``weights[index]``, and -1 picks the *last* adapter slot, so base requests batched with adapter
   requests silently got an adapter applied. The LoRA-A product of those tokens is zeroed after the shrink,
   so the expand adds nothing to them.

vLLM calls :func:`register` in every process it starts, possibly several times; it is idempotent.
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger("recoverlib")


def lora_targets_experts(target_modules: list[str] | None) -> bool:
    """True unless the LoRA target modules are known and none is an expert weight (None: unknown, assume yes)."""
    from recoverlib.engines.base import names_expert_weights

    return not target_modules or names_expert_weights(target_modules)


def _moe_lora_applies() -> bool:
    """Whether MoE layers of the engine being built really serve LoRA, judged from its config."""
    from vllm.config import get_current_vllm_config_or_none

    lora = getattr(get_current_vllm_config_or_none(), "lora_config", None)
    return lora is None or lora_targets_experts(lora.target_modules)


def _patch_once(owner, attr: str, make_wrapper) -> None:
    original = getattr(owner, attr)
    if getattr(original, "_recoverlib", False):
        return
    wrapper = functools.wraps(original)(make_wrapper(original))
    wrapper._recoverlib = True
    setattr(owner, attr, wrapper)


def _keep_cpu_moe_kernel() -> None:
    from vllm.model_executor.layers.fused_moe.config import FusedMoEConfig

    def make(original):
        def __post_init__(self):
            if self.is_lora_enabled and not _moe_lora_applies():
                self.is_lora_enabled = False
            original(self)

        return __post_init__

    _patch_once(FusedMoEConfig, "__post_init__", make)


def _mask_no_lora_tokens() -> None:
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    def make(original):
        def shrink(self, y, x, w_t_all, scale):
            original(self, y, x, w_t_all, scale)
            indices = self.token_lora_indices
            if indices.shape[0] == y.shape[0]:
                no_lora = indices < 0
                if bool(no_lora.any()):
                    y[no_lora] = 0

        return shrink

    _patch_once(PunicaWrapperCPU, "_shrink_prefill", make)
    _patch_once(PunicaWrapperCPU, "_shrink_decode", make)


def register() -> None:
    """Install the CPU cures (no-op on other platforms and when already installed)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    _keep_cpu_moe_kernel()
    _mask_no_lora_tokens()
    log.debug("recoverlib vLLM plugin: CPU MoE kernel kept for attention-LoRA; base tokens masked in mixed batches")
