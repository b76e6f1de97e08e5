"""The serving memory planner: will vLLM serve this model on these devices, and with how much KV cache?

From a ``config.json`` (a Mixtral, or a dense Mistral, Llama, Qwen2 or Gemma), a precision plan (weight bytes
from :func:`recoverlib.quant.planner.plan_bytes`) and the engine settings it works out, per device, what vLLM
0.32 allocates at start-up:

- weights: attention, experts or the dense MLP, lm_head and embeddings split over the tensor-parallel ranks;
  router and norms replicated; K/V projections replicated when ranks outnumber KV heads (vLLM gives each rank
  at least one KV head);
- KV cache: ``2 (K and V) x layers x KV heads per rank x head_dim x dtype bytes`` per token, for each rank;
- LoRA buffers: vLLM preallocates ``max_loras`` slots of ``max_lora_rank`` on every targeted module
  (column-parallel layers hold A whole and B sharded, row-parallel ones the other way round:
  ``vllm/lora/layers/base_linear.py``);
- activations of the profiling forward (``max_num_batched_tokens`` tokens through attention and the fused-MoE
  kernel's intermediate caches, or the dense MLP's) and a fixed overhead for the CUDA context, CUDA graphs and
  all-reduce buffers.

What is left of ``gpu_memory_utilization x device memory`` is the KV cache, as vLLM sizes it. The weights and
KV figures are exact shape arithmetic (checked against vLLM on CPU: ``benchmarks/serving_plan_check.py``); the
activation and fixed overheads are estimates (constants below), not measured on a GPU by this project.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from recoverlib.engines.vllm_setup import CPU_BLOCK_SIZE
from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import read_config
from recoverlib.quant.plan import COMPUTE_DTYPES, DTYPE_BYTES, PrecisionPlan, load_plan
from recoverlib.quant.planner import ModelShapes, plan_bytes

GiB = 1024**3
# Per-GPU overheads outside weights, KV cache and activations. Assumed, not measured here (no GPU was lent to
# this work): the CUDA context and allocator slack, CUDA graphs (none with enforce_eager), NCCL and vLLM's
# custom all-reduce buffers (tensor parallel only).
CUDA_CONTEXT_BYTES = int(0.6 * GiB)
CUDA_GRAPH_BYTES = int(0.5 * GiB)
ALL_REDUCE_BYTES = int(0.25 * GiB)
GPU_BLOCK_SIZE = 16  # vLLM's KV block on CUDA, which VLLMEngine keeps
GPU_BATCHED_TOKENS = 8192  # VLLMEngine's max_num_batched_tokens on GPU (at least max_model_len)
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
EXPERT_TARGETS = ("w1", "w2", "w3")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")  # a dense MLP (vLLM packs gate and up into gate_up_proj)


@dataclass(frozen=True)
class Devices:
    """``count`` devices of ``memory_bytes`` each (GPUs), or the CPU (``cpu_kv_bytes``: vLLM's fixed KV
    space)."""

    count: int = 1
    memory_bytes: int | None = None
    cpu_kv_bytes: int | None = None  # VLLM_CPU_KVCACHE_SPACE in bytes, per rank (CPU only)

    @property
    def is_cpu(self) -> bool:
        return self.memory_bytes is None


def parse_gpus(text: str) -> Devices:
    """``"2x15GB"`` (or ``"15GiB"``, ``"1x80GB"``) -> :class:`Devices`; GB are 10^9 bytes, GiB 2^30."""
    m = re.fullmatch(r"\s*(?:(\d+)\s*x\s*)?(\d+(?:\.\d+)?)\s*(GB|GiB)\s*", text, re.IGNORECASE)
    if not m:
        raise RecoverlibError(f"--gpus {text!r}: expected COUNTxSIZE like 2x15GB or 1x80GiB")
    unit = GiB if m.group(3).lower() == "gib" else 10**9
    return Devices(count=int(m.group(1) or 1), memory_bytes=int(float(m.group(2)) * unit))


@dataclass(frozen=True)
class ServingSetup:
    """The engine settings memory depends on (the CLI's and :class:`EngineConfig`'s names)."""

    tensor_parallel_size: int = 1
    max_model_len: int = 4096
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None  # None: VLLMEngine's (max_model_len, at least 8192 on GPU)
    gpu_memory_utilization: float = 0.9
    max_loras: int = 0
    max_lora_rank: int = 16
    lora_targets: tuple[str, ...] = ATTENTION_TARGETS
    enforce_eager: bool = False
    block_size: int | None = None  # KV-cache block in tokens; None: VLLMEngine's (32 on CPU, 16 on GPU)

    def __post_init__(self):
        for name in ("tensor_parallel_size", "max_model_len", "max_num_seqs", "max_lora_rank"):
            if getattr(self, name) < 1:
                raise RecoverlibError(f"{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        if self.max_loras < 0 or (
            self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1
        ):
            raise RecoverlibError("max-loras must be >= 0 and max-num-batched-tokens >= 1")
        if self.block_size is not None and (self.block_size < 16 or self.block_size % 16):
            raise RecoverlibError(f"block-size must be a multiple of 16 (got {self.block_size})")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise RecoverlibError(
                f"gpu-memory-utilization must be in (0, 1] (got {self.gpu_memory_utilization})"
            )
        known = ATTENTION_TARGETS + EXPERT_TARGETS + MLP_TARGETS
        unknown = sorted(set(self.lora_targets) - set(known))
        if unknown:
            raise RecoverlibError(f"LoRA targets {unknown}: choose from {', '.join(known)}")

    def batched_tokens(self, devices: Devices) -> int:
        return self.max_num_batched_tokens or max(
            self.max_model_len, 0 if devices.is_cpu else GPU_BATCHED_TOKENS
        )


@dataclass(frozen=True)
class ServingEstimate:
    """Bytes per device (one tensor-parallel rank) at engine start; KV cache is what the budget leaves."""

    setup: ServingSetup
    devices: Devices
    weights: int
    kv_bytes_per_token: int
    lora: int
    activations: int
    fixed_overhead: int
    budget: int  # gpu_memory_utilization x device memory (GPU), the KV space + the rest (CPU)

    @property
    def kv_cache(self) -> int:
        if self.devices.is_cpu:
            return self.devices.cpu_kv_bytes or 0
        return self.budget - self.weights - self.lora - self.activations - self.fixed_overhead

    @property
    def block_size(self) -> int:
        return self.setup.block_size or (CPU_BLOCK_SIZE if self.devices.is_cpu else GPU_BLOCK_SIZE)

    @property
    def kv_tokens(self) -> int:
        """Tokens the KV cache holds: vLLM allocates it in whole blocks."""
        block = self.block_size
        return max(0, self.kv_cache) // (self.kv_bytes_per_token * block) * block

    @property
    def requested_kv_bytes(self) -> int:
        """KV cache for ``max_num_seqs`` sequences all at ``max_model_len`` (the most the settings can ask
        for)."""
        return self.setup.max_num_seqs * self.setup.max_model_len * self.kv_bytes_per_token

    @property
    def fits(self) -> bool:
        """vLLM starts only if the KV cache holds at least one sequence of ``max_model_len`` tokens."""
        return self.kv_tokens >= self.setup.max_model_len

    def verdict(self) -> str:
        """One line: fits (with how many tokens and full-length sequences), or what to change."""
        s = self.setup
        if not self.fits:
            short = self.setup.max_model_len * self.kv_bytes_per_token - self.kv_cache
            return (
                f"does not fit: {short / 1e9:.2f} GB per device short of one {s.max_model_len}-token "
                "sequence;"
                " change the plan to fewer bits, raise --tensor-parallel-size, lower --max-model-len"
                " or --max-loras/--max-lora-rank"
            )
        full = self.kv_tokens // s.max_model_len
        line = (f"fits: {self.kv_tokens:,} tokens of KV cache ({full} sequences of {s.max_model_len} tokens"
                " at once)")
        if full < s.max_num_seqs:
            line += (f"; fewer than --max-num-seqs {s.max_num_seqs} at full length"
                     " (shorter sequences share the rest)")
        return line


def _weights_per_rank(config: dict, plan, tp: int) -> int:
    est = plan_bytes(config, plan)
    shapes = ModelShapes.from_config(config)
    g = {name: e.bytes for name, e in est.groups.items()}
    q, kv = shapes.heads * shapes.head_dim, shapes.kv_heads * shapes.head_dim
    kv_share = 2 * kv / (2 * q + 2 * kv)  # of attention bytes: k_proj and v_proj (equal widths per row)
    kv_per_rank = max(1 / tp, 1 / shapes.kv_heads)  # vLLM replicates KV heads when ranks outnumber them
    attention = g["attention"] * ((1 - kv_share) / tp + kv_share * kv_per_rank)
    sharded = g["experts"] + g["mlp"] + g["lm_head"] + g["embeddings"]
    return int(attention + sharded / tp + g["router"] + est.other_bytes)


def kv_bytes_per_token(config: dict, tp: int, dtype_bytes: int) -> int:
    """KV-cache bytes one token takes on each rank: K and V of every layer, the rank's KV heads."""

    s = ModelShapes.from_config(config)
    return 2 * s.layers * max(1, s.kv_heads // tp) * s.head_dim * dtype_bytes


def lora_buffer_bytes(config: dict, setup: ServingSetup, dtype_bytes: int) -> int:
    """vLLM's preallocated LoRA stacks on each rank: ``max_loras`` slots of ``max_lora_rank`` per targeted
    module."""

    if setup.max_loras == 0:
        return 0
    s, tp, r = ModelShapes.from_config(config), setup.tensor_parallel_size, setup.max_lora_rank
    h, q, kv = s.hidden, s.heads * s.head_dim, max(1, s.kv_heads // tp) * s.head_dim
    t = set(setup.lora_targets)
    per_layer = 0
    if t & {"q_proj", "k_proj", "v_proj"}:  # one packed qkv_proj: A whole per slice, B sharded
        per_layer += 3 * r * h + r * (q // tp + 2 * kv)
    if "o_proj" in t:  # row parallel: A sharded, B whole
        per_layer += r * q // tp + h * r
    if t & {"w1", "w3"}:
        per_layer += s.experts * 2 * (r * h + r * s.intermediate // tp)
    if "w2" in t:
        per_layer += s.experts * (r * s.intermediate // tp + h * r)
    if t & {"gate_proj", "up_proj"}:  # one packed gate_up_proj: A whole per slice, B sharded
        per_layer += 2 * (r * h + r * s.intermediate // tp)
    if "down_proj" in t:  # row parallel: A sharded, B whole
        per_layer += r * s.intermediate // tp + h * r
    return per_layer * s.layers * setup.max_loras * dtype_bytes


def check_lora_targets(config: dict, setup: ServingSetup) -> None:
    """LoRA targets the model has: expert weights (w1/w2/w3) on a MoE, gate/up/down_proj on a dense model."""
    s = ModelShapes.from_config(config)
    wrong = set(setup.lora_targets) & set(EXPERT_TARGETS if s.dense else MLP_TARGETS)
    if wrong:
        kind, right = ("a dense model", MLP_TARGETS) if s.dense else ("a mixture of experts", EXPERT_TARGETS)
        raise RecoverlibError(
            f"LoRA targets {sorted(wrong)}: {kind} has none; its feed-forward targets are {', '.join(right)}"
        )


def activation_bytes(config: dict, setup: ServingSetup, devices: Devices, dtype_bytes: int) -> int:
    """Peak activations of vLLM's profiling forward on one rank (an estimate): hidden states, q/k/v, and the
    fused-MoE kernel's three intermediate caches for ``max_num_batched_tokens`` tokens, plus fp32 logits."""

    s, tp = ModelShapes.from_config(config), setup.tensor_parallel_size
    top_k = 1 if s.dense else int(config.get("num_experts_per_tok", 2))  # a dense MLP: every token, once
    per_token = 4 * s.hidden + (s.heads * s.head_dim + 2 * s.kv_heads * s.head_dim) // tp
    per_token += top_k * (3 * s.intermediate // tp + s.hidden)
    logits = setup.max_num_seqs * s.vocab * 4
    return setup.batched_tokens(devices) * per_token * dtype_bytes + logits


def load_serving_plan(spec):
    """A precision plan (preset name, JSON file, PrecisionPlan), or a dtype name for an unquantized model."""

    if isinstance(spec, str) and spec in COMPUTE_DTYPES:
        # nothing quantized: backend unused
        return PrecisionPlan(backend="gptq", compute_dtype=spec, name=spec)
    return load_plan(spec)


def plan_serving(config, plan, setup: ServingSetup, devices: Devices) -> ServingEstimate:
    """Memory per device of serving ``config`` under ``plan`` (a preset, JSON file, PrecisionPlan, or a dtype
    such as ``bfloat16`` for an unquantized model) with vLLM."""

    cfg, plan = read_config(config), load_serving_plan(plan)
    tp = setup.tensor_parallel_size
    if not devices.is_cpu and tp > devices.count:
        raise RecoverlibError(f"tensor parallel size {tp} needs {tp} GPUs; --gpus gives {devices.count}")
    dtype_bytes = DTYPE_BYTES[plan.compute_dtype]
    check_lora_targets(cfg, setup)
    weights = _weights_per_rank(cfg, plan, tp)
    lora = lora_buffer_bytes(cfg, setup, dtype_bytes)
    if devices.is_cpu:
        return ServingEstimate(setup, devices, weights, kv_bytes_per_token(cfg, tp, dtype_bytes), lora, 0, 0,
                               weights + lora + (devices.cpu_kv_bytes or 0))
    fixed = (
        CUDA_CONTEXT_BYTES
        + (0 if setup.enforce_eager else CUDA_GRAPH_BYTES)
        + (ALL_REDUCE_BYTES if tp > 1 else 0)
    )
    return ServingEstimate(setup, devices, weights, kv_bytes_per_token(cfg, tp, dtype_bytes), lora,
                           activation_bytes(cfg, setup, devices, dtype_bytes), fixed,
                           int(setup.gpu_memory_utilization * devices.memory_bytes))


def _size(nbytes: int) -> str:
    """Bytes as GB (10^9), or MB below 0.1 GB, right-aligned."""
    return f"{nbytes / 1e9:8.2f} GB" if abs(nbytes) >= 1e8 else f"{nbytes / 1e6:8.2f} MB"


def serving_report_lines(est: ServingEstimate) -> list[str]:
    """The serving part of ``recoverlib plan``'s report: one figure per line, per device, then the verdict."""
    s, gb = est.setup, _size
    where = (
        "CPU"
        if est.devices.is_cpu
        else f"{est.devices.count} GPU(s) of {est.devices.memory_bytes / 1e9:.1f} GB"
    )
    lines = [
        f"serving with vLLM on {where}, tensor parallel {s.tensor_parallel_size}, per device:",
        f"  weights            {gb(est.weights)}",
        f"  LoRA buffers       {gb(est.lora)}   ({s.max_loras} slots x rank {s.max_lora_rank} on"
        f" {','.join(s.lora_targets)})",
    ]
    if not est.devices.is_cpu:
        lines += [
            f"  activations (est.) {gb(est.activations)}   ({s.batched_tokens(est.devices)} batched tokens)",
            f"  CUDA/NCCL (est.)   {gb(est.fixed_overhead)}",
            f"  budget             {gb(est.budget)}   (gpu memory utilization {s.gpu_memory_utilization})",
        ]
    lines += [
        f"  KV cache           {gb(est.kv_cache)}   ({est.kv_bytes_per_token:,} bytes per token)",
        f"  asked for          {gb(est.requested_kv_bytes)}   ({s.max_num_seqs} sequences x "
        f"{s.max_model_len} tokens)",
        est.verdict(),
    ]
    return lines
