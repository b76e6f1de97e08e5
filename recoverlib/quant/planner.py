"""The memory planner: exact weight bytes of a plan from a ``config.json`` alone, no weights loaded.

Each group's linears come from the model's shapes (:class:`ModelShapes`: a Mixtral, or a dense Mistral,
Llama, Qwen2 or Gemma, :mod:`recoverlib.architectures`); quantized linears are costed by their backend's
:meth:`~recoverlib.quant.backends.base.QuantBackend.linear_bytes` (and :meth:`bias_bytes` for Qwen2's q/k/v
biases), everything else at the compute dtype. The plan is first fitted to the model
(:func:`~recoverlib.quant.plan.plan_for_model`). On a model the audit measures, the two agree to the byte.
Figures are weights only: no KV cache, activations, CUDA context or allocator slack, which the published
runtime figures include.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recoverlib.architectures import MOE, architecture_of, completed, public_config
from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import read_config
from recoverlib.module_groups import GROUPS
from recoverlib.quant.backends import get_backend
from recoverlib.quant.plan import DTYPE_BYTES, PrecisionPlan, plan_for_model

# Mixtral-8x7B's public config, the fields the planner reads (the others: recoverlib.architectures).
MIXTRAL_8X7B = public_config("mixtral-8x7b")


@dataclass(frozen=True)
class ModelShapes:
    """The shapes weight memory depends on. ``experts`` is 0 for a dense model (an ``mlp`` per layer)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    experts: int = 0
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_config(cls, cfg: dict) -> ModelShapes:
        arch = architecture_of(cfg, "config")
        cfg = completed(cfg)
        needed = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "vocab_size"]
        missing = [k for k in needed + (["num_local_experts"] if arch.kind == MOE else []) if k not in cfg]
        if missing:
            raise RecoverlibError(
                f"config has no {', '.join(missing)}: the planner needs them for {arch.describe()}"
            )
        heads = cfg["num_attention_heads"]
        return cls(
            cfg["hidden_size"],
            cfg["intermediate_size"],
            cfg["num_hidden_layers"],
            heads,
            cfg.get("num_key_value_heads") or heads,
            cfg.get("head_dim") or cfg["hidden_size"] // heads,
            cfg["vocab_size"],
            arch.tied,
            cfg["num_local_experts"] if arch.kind == MOE else 0,
            arch.qkv_bias,
            arch.o_bias,
            arch.mlp_bias,
        )

    @property
    def dense(self) -> bool:
        return self.experts == 0

    def linears(self) -> dict[str, list[tuple[int, int, int, bool]]]:
        """group -> [(out_features, in_features, how many, with a bias)]; embeddings are a (vocab x hidden)
        table."""
        h, L, i = self.hidden, self.layers, self.intermediate
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        e = self.experts
        return {
            "attention": [(q, h, L, self.qkv_bias), (kv, h, 2 * L, self.qkv_bias), (h, q, L, self.o_bias)],
            "experts": [(i, h, 2 * e * L, False), (h, i, e * L, False)],
            "mlp": [(i, h, 2 * L, self.mlp_bias), (h, i, L, self.mlp_bias)] if self.dense else [],
            "router": [(e, h, L, False)] if e else [],
            "lm_head": [] if self.tied else [(self.vocab, h, 1, False)],
            "embeddings": [(self.vocab, h, 1, False)],
        }

    @property
    def norm_params(self) -> int:
        return (2 * self.layers + 1) * self.hidden


@dataclass(frozen=True)
class GroupEstimate:
    bits: int | None
    group_size: int | None
    params: int
    bytes: int


@dataclass(frozen=True)
class PlanEstimate:
    """Weight bytes per group for a plan; ``other`` holds the norms."""

    plan: str
    groups: dict[str, GroupEstimate]
    other_bytes: int
    other_params: int

    @property
    def total_bytes(self) -> int:
        return sum(g.bytes for g in self.groups.values()) + self.other_bytes

    @property
    def total_params(self) -> int:
        return sum(g.params for g in self.groups.values()) + self.other_params

    @property
    def effective_bits(self) -> float:
        return 8 * self.total_bytes / self.total_params


def plan_bytes(config: str | Path | dict, plan: PrecisionPlan) -> PlanEstimate:
    """Exact in-memory weight bytes of ``plan`` (fitted to the model) applied to the model described by
    ``config``."""
    cfg = read_config(config)
    shapes = ModelShapes.from_config(cfg)
    plan = plan_for_model(plan, cfg, "config")
    backend = get_backend(plan.backend)
    plain = DTYPE_BYTES[plan.compute_dtype]
    groups = {}
    for g in GROUPS:
        prec = plan.group(g)
        params = nbytes = 0
        for out_f, in_f, count, bias in shapes.linears()[g]:
            params += (out_f * in_f + (out_f if bias else 0)) * count
            if prec.quantized:
                one = backend.linear_bytes(out_f, in_f, prec, plan.compute_dtype)
                one += backend.bias_bytes(out_f, plan.compute_dtype) if bias else 0
            else:
                one = (out_f * in_f + (out_f if bias else 0)) * plain
            nbytes += one * count
        groups[g] = GroupEstimate(prec.bits if prec.quantized else 8 * plain, prec.group_size, params, nbytes)
    return PlanEstimate(plan.name, groups, shapes.norm_params * plain, shapes.norm_params)


# Peak-memory model of the streaming quantizer (recoverlib.quant.stream), constants measured on this project's
# 2-core CPU machine. The 16-bit input is read as lazily memory-mapped tensors, so only the linear being
# quantized is resident; the quantized outputs of the piece accumulate until it is written. TRANSIENT_FP32:
# the peak a backend's quantizer adds while quantizing one linear, in fp32 copies of that linear. bitsandbytes
# NF4 on a 14336x4096 bf16 matrix: +0.84 GB (ru_maxrss over the RSS before) = 3.6 copies. hqq 4-bit g64 with
# its optimizer in row blocks (patch hqq-blocked-optimizer): 4.8 copies, from whole full-width runs peaking at
# 2.98 and 3.02 GB for 1 and 2 layers (benchmarks/results/quant_scale_hqq.md); hqq's own optimizer on the
# whole matrix needed 9.2 (4.12 GB, quant_scale_hqq_before.md). FIXED_HOST: the interpreter and libraries
# (benchmarks/quant_scale.py).
FIXED_HOST = int(1.0e9)
TRANSIENT_FP32 = {"bnb": 3.6, "hqq": 4.8}
# GPTQ (GPTQModel 7.6.0 on the CPU, benchmarks/results/quant_scale_gptq.md): one full-width layer peaked at
# 14.41 GB while the 16 expert gate/up modules were quantized together: FIXED_HOST + the 2.90 GB layer + 16 x
# (a 67 MB Hessian + 2.5 fp32 copies of a 235 MB weight). The 8 down_proj (822 MB Hessians) peaked lower (9.5
# GB): their set is over-counted, so the estimate errs high.
GPTQ_WORK_FP32 = 2.5
# CUDA context and kernels on the device, not counted by torch's allocator (not measured)
CUDA_CONTEXT = int(0.5e9)


@dataclass(frozen=True)
class QuantizePeak:
    """Peak memory of a streaming quantize, in bytes, with the terms it is the maximum of.

    ``host_bytes`` = :data:`FIXED_HOST` + the largest of (quantizing a piece: its quantized tensors + its
    largest quantized linear in 16 bit + the quantizer's transient, the transient on the host only for a CPU
    run; of the two kinds of piece, a decoder layer or the embeddings/norm/head, the one that peaks higher:
    ``piece_quantized``, ``largest_linear_16bit`` and ``transient`` are that piece's) and (packing: one output
    shard). ``device_bytes``: 0 on the CPU; on a GPU one quantized piece + the
    largest 16-bit linear + the transient + :data:`CUDA_CONTEXT`. ``piece_16bit`` (one decoder layer at the
    compute dtype) is what a loader that copied its input would hold; it is reported, not added.
    """

    weights_bytes: int
    piece_16bit: int
    piece_quantized: int
    largest_linear_16bit: int
    transient: int
    shard: int
    host_bytes: int
    device_bytes: int


def gptq_working_set(shapes: ModelShapes, plan: PrecisionPlan) -> int:
    """Bytes GPTQModel adds while quantizing one decoder layer: the largest set of modules it quantizes
    together (q/k/v; o; every expert's gate and up; every expert's down; the router with a ``+router`` plan;
    a dense MLP's gate and up; its down), each with its fp32 Hessian (in x in) and :data:`GPTQ_WORK_FP32`
    fp32 copies of its weight. ``plan`` is fitted to the model."""
    h, i, e = shapes.hidden, shapes.intermediate, shapes.experts
    q, kv = shapes.heads * shapes.head_dim, shapes.kv_heads * shapes.head_dim
    subsets = {
        "attention": [[(q, h), (kv, h), (kv, h)], [(h, q)]],
        "experts": [[(i, h)] * (2 * e), [(h, i)] * e] if e else [],
        "mlp": [] if e else [[(i, h)] * 2, [(h, i)]],
        "router": [[(e, h)]] if e else [],
    }
    return max(
        (
            sum(4 * inp * inp + int(GPTQ_WORK_FP32 * 4 * out * inp) for out, inp in subset)
            for group, sets in subsets.items()
            if plan.group(group).quantized
            for subset in sets
        ),
        default=0,
    )


def quantize_peak(config: str | Path | dict, plan: PrecisionPlan, device: str = "cpu",
                  max_shard_bytes: int = 5 * 10**9) -> QuantizePeak:
    """Peak host and device memory of ``recoverlib quantize`` with ``plan`` on ``device``, from the config
    alone."""
    cfg = read_config(config)
    plan = plan_for_model(plan, cfg, "config")
    if get_backend(plan.backend).calibrated:
        return _gptq_peak(cfg, plan, device, max_shard_bytes)
    shapes = ModelShapes.from_config(cfg)
    plain = DTYPE_BYTES[plan.compute_dtype]
    layer_16, layer_q = _layer_bytes(cfg, plan)
    total = plan_bytes(cfg, plan).total_bytes
    one = ModelShapes(**{**shapes.__dict__, "layers": 1}).linears()

    def largest(groups) -> int:
        return max((o * i for g in groups if plan.group(g).quantized for o, i, _, _ in one[g]), default=0)

    # the piece whose quantizing peaks: a decoder layer, or the outer piece (16-bit unless lm_head is planned)
    pieces = [(layer_q, largest(("attention", "experts", "mlp", "router"))),
              (total - shapes.layers * layer_q, largest(("lm_head", "embeddings")))]
    on_cpu = device == "cpu"

    def term(piece) -> int:
        transient = int(4 * piece[1] * TRANSIENT_FP32.get(plan.backend, 4.0))
        return piece[0] + piece[1] * plain + (transient if on_cpu else 0)

    piece_q, big = max(pieces, key=term)
    transient = int(4 * big * TRANSIENT_FP32.get(plan.backend, 4.0))
    shard = min(max_shard_bytes, total)
    host = FIXED_HOST + max(term((piece_q, big)), shard)
    device_bytes = 0 if on_cpu else piece_q + big * plain + transient + CUDA_CONTEXT
    return QuantizePeak(total, layer_16, piece_q, big * plain, transient, shard, host, device_bytes)


def _layer_bytes(cfg: dict, plan: PrecisionPlan) -> tuple[int, int]:
    """Bytes of one decoder layer in 16 bit and quantized by ``plan``."""
    layer_cfg = {**cfg, "num_hidden_layers": 1, "vocab_size": 0}
    # plan_bytes counts the final norm; a layer has none
    final_norm = cfg["hidden_size"] * DTYPE_BYTES[plan.compute_dtype]
    plain = PrecisionPlan(plan.backend, compute_dtype=plan.compute_dtype)
    return plan_bytes(layer_cfg, plain).total_bytes - final_norm, plan_bytes(
        layer_cfg, plan
    ).total_bytes - final_norm


def _gptq_peak(cfg: dict, plan: PrecisionPlan, device: str, max_shard_bytes: int) -> QuantizePeak:
    """GPTQModel's layer loop: it holds the whole decoder layer in 16 bit beside the working set (on the
    device for a GPU run; the host then holds the layer while it is moved, not measured)."""
    layer_16, layer_q = _layer_bytes(cfg, plan)
    total = plan_bytes(cfg, plan).total_bytes
    working = gptq_working_set(ModelShapes.from_config(cfg), plan)
    shard = min(max_shard_bytes, total)
    on_gpu = device != "cpu"
    host = FIXED_HOST + max(layer_16 + (0 if on_gpu else working), shard)
    device_bytes = layer_16 + working + CUDA_CONTEXT if on_gpu else 0
    return QuantizePeak(total, layer_16, layer_q, layer_16, working, shard, host, device_bytes)


def format_estimates(estimates: list[PlanEstimate], unit: float = 1e9) -> str:
    """One row per plan: GB per group (the groups the models have), total GB, effective bits per parameter."""
    groups = [g for g in GROUPS if any(e.groups[g].params for e in estimates)]
    head = f"{'plan':<24}" + "".join(f"{g:>12}" for g in groups) + f"{'total GB':>10}{'bits/param':>11}"
    rows = [head, "-" * len(head)]
    for e in estimates:
        cells = "".join(f"{e.groups[g].bytes / unit:>12.3f}" for g in groups)
        rows.append(f"{e.plan:<24}{cells}{e.total_bytes / unit:>10.2f}{e.effective_bits:>11.3f}")
    return "\n".join(rows)
