"""recoverlib's vLLM plugin (entry point ``vllm.general_plugins``): multi-LoRA on MoE models on CPU, and
seeded samples that repeat through a server.

Six cures; the first five are active on the CPU platform only:

1. **MoE kernel.** vLLM chooses its fused-MoE kernel by "is LoRA enabled at all"
   (``FusedMoEConfig.is_lora_enabled``), not by which modules the adapters touch. On CPU that selects the
   Triton MoE kernel, which cannot run there, so any LoRA on a Mixtral fails at its first forward. When the
   engine's LoRA target modules are known and none is an expert weight, the MoE layers have no LoRA to apply
   and keep the ordinary CPU kernel. Expert-targeting adapters are left alone (vLLM's CPU punica ops cannot
   run them; recoverlib's VLLMEngine refuses them before the engine starts).
2. **LoRA products grouped by adapter** (:mod:`grouped_lora`). The CPU punica ops gather a weight matrix per
   token, which cost about half the decode time, and index -1 (a request without an adapter) picked the *last*
   adapter slot, so base requests batched with adapter requests silently got an adapter applied. Grouped
   products run one matmul per adapter present and leave tokens without an adapter untouched.
3. **Top-p without a full sort** (:mod:`top_p`). The CPU sampler sorted the whole vocabulary of every row at
   every step for top-p, about 40 % of generation time on the tiny Mixtral; the nucleus is now found among
   each row's most likely tokens, and only rows with a wide nucleus are sorted.
4. **Experts as oneDNN GEMMs** (:mod:`moe_gemm`). On a CPU without AMX vLLM runs 16-bit experts through a
   portable grouped GEMM at about 0.4x the rate of the oneDNN GEMM it uses for every dense linear; each
   expert's two projections become two oneDNN GEMMs over the tokens routed to it.
5. **16-bit linears in float32 where vLLM has only torch's** (:mod:`upcast_linear`). On AVX2 alone oneDNN has
   no bf16 GEMM and vLLM leaves every dense linear to torch's slow bf16 ``linear``; a float32 GEMM with the
   weight converted per call is 1.6x (decode) to 7x (prefill) faster there.
6. **Whole requests** (:mod:`whole_requests`, every platform). The prompts of one client request that names
   itself a group start in the same step, whatever the machine's load, so a server's batches (and numerics)
   for recoverlib's ``--engine openai`` are those of the in-process engine and seeded samples repeat.

vLLM calls :func:`register` in every process it starts, possibly several times, and without a try/except: so
the plugin is idempotent, patches only the vLLM version it was tested on (:mod:`recoverlib.patches`; another
version logs one warning and keeps vLLM's own code), applies each cure on its own (one that fails is warned
and skipped, the others stay), and is off entirely with ``RECOVERLIB_VLLM_PLUGIN=0`` (or limited to the cures
a comma-separated list there names: benchmarks compare against vLLM with only the MoE-kernel cure LoRA needs).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

from recoverlib.module_groups import names_expert_weights
from recoverlib.patches import PATCHES, version_matches
from recoverlib.vllm_plugin.whole_requests import install as install_whole_requests
from recoverlib.vllm_plugin.whole_requests import install_tag_check

# vLLM's completion endpoint, and the modules that run vLLM's OpenAI server as ``python -m``
COMPLETION_SERVING = "vllm.entrypoints.openai.completion.serving"
API_SERVER_MAINS = ("vllm.entrypoints.launchers.api_server.entry", "vllm.entrypoints.openai.api_server")


def api_server_process() -> bool:
    """Whether this process is a vLLM OpenAI server's API process (not its engine core or workers, which
    vLLM starts as children of it)."""
    import multiprocessing

    main = getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", "")
    by_cli = Path(sys.argv[0]).name == "vllm" and sys.argv[1:2] == ["serve"]
    return (main in API_SERVER_MAINS or by_cli) and multiprocessing.parent_process() is None

log = logging.getLogger("recoverlib")


def lora_targets_experts(target_modules: list[str] | None) -> bool:
    """True unless the LoRA target modules are known and none is an expert weight (None: unknown, assume
    yes)."""

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


def _grouped_lora_products() -> None:
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    from recoverlib.vllm_plugin.grouped_lora import install  # torch: only where a cure is installed

    if not getattr(PunicaWrapperCPU._shrink_decode, "_recoverlib", False):
        install(PunicaWrapperCPU)


def _top_p_without_sort() -> None:
    from vllm.v1.sample.ops import topk_topp_sampler as sampler

    from recoverlib.vllm_plugin.top_p import make_apply_top_k_top_p  # torch: only where a cure is installed

    _patch_once(sampler, "apply_top_k_top_p",
                lambda original: make_apply_top_k_top_p(original, sampler.apply_top_k_only))


def _moe_gemms() -> None:
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts

    from recoverlib.vllm_plugin.moe_gemm import install  # torch: only where a cure is installed

    if not getattr(CPUUnquantizedExperts.apply, "_recoverlib", False):
        install(CPUUnquantizedExperts)


def _upcast_linears() -> None:
    from vllm.model_executor.layers import utils

    from recoverlib.vllm_plugin.upcast_linear import install  # torch: only where a cure is installed

    if not getattr(utils.dispatch_cpu_unquantized_gemm, "_recoverlib", False):
        install(utils)


def _whole_requests() -> None:
    from vllm.v1.core.sched.scheduler import Scheduler

    if not getattr(Scheduler.add_request, "_recoverlib", False):
        install_whole_requests(Scheduler)
    if api_server_process():  # imported here a little before the server does
        import importlib

        cls = importlib.import_module(COMPLETION_SERVING).OpenAIServingCompletion
        if not getattr(cls.render_completion_request, "_recoverlib", False):
            install_tag_check(cls)


CURES = {"vllm-cpu-moe-kernel": _keep_cpu_moe_kernel, "vllm-grouped-lora": _grouped_lora_products,
         "vllm-top-p": _top_p_without_sort, "vllm-cpu-moe-gemm": _moe_gemms,
         "vllm-cpu-upcast-linear": _upcast_linears, "vllm-whole-requests": _whole_requests}
ANY_PLATFORM = ("vllm-whole-requests",)  # the others change CPU kernels
DISABLE_ENV = "RECOVERLIB_VLLM_PLUGIN"  # "0": off; a comma-separated list of cure names: only those


def chosen_cures(setting: str | None) -> list[str]:
    """The cures ``RECOVERLIB_VLLM_PLUGIN`` asks for: all (unset or "1"), none ("0"), or the ones it names."""
    if setting in (None, "", "1"):
        return list(CURES)
    if setting == "0":
        return []
    names = [n.strip() for n in setting.split(",") if n.strip()]
    unknown = [n for n in names if n not in CURES]
    if unknown:
        log.warning("%s=%s: unknown cure(s) %s (known: %s)", DISABLE_ENV, setting, unknown, ", ".join(CURES))
    return [n for n in CURES if n in names]


def register() -> list[str]:
    """Install the CPU cures; returns the names installed (none on other platforms, versions or when
    disabled)."""
    wanted = chosen_cures(os.environ.get(DISABLE_ENV))
    if not wanted:
        return []
    try:
        from vllm.platforms import current_platform

        cpu = current_platform.is_cpu()
    except Exception as err:  # noqa: BLE001 (a plugin must never break vLLM's start)
        log.warning("recoverlib vLLM plugin off: cannot read vLLM's platform (%s)", err)
        return []
    installed = []
    for name, cure in CURES.items():
        if name not in wanted or not (cpu or name in ANY_PLATFORM):
            continue
        patch = PATCHES[name]
        if not version_matches(patch.distribution, patch.tested):
            continue  # warned once; vLLM keeps its own code path
        try:
            cure()
        except Exception as err:  # noqa: BLE001
            log.warning("recoverlib vLLM plugin: %s not applied (%s: %s); vLLM's own code path stays",
                        name, type(err).__name__, err)
            continue
        installed.append(name)
    log.debug("recoverlib vLLM plugin installed: %s", ", ".join(installed) or "nothing")
    return installed
