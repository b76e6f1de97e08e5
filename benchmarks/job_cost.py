"""What an ensemble job costs a Mixtral-shaped model, counted from its config and the real prompt lengths: the
FLOPs and the bytes of every phase (the prefill of each distinct prompt, then each decode step of every
sequence), and the time a machine of given ceilings needs for them (its roofline). Pure arithmetic: the
measurements live in ``benchmarks/roofline.py``.

Conventions: a multiply-add is 2 FLOPs; 16-bit weights (2 bytes); the logits are computed for the last
prompt token only (as vLLM does); a decode step reads every weight it touches once (attention, the router,
each expert any of its sequences routes to, the LM head) and every sequence's KV cache; LoRA (rank r on q, k,
v, o) is counted as its two small products per token. Embedding lookups, norms and the sampler are left out
(their bytes are a row per token).
"""

from __future__ import annotations

from dataclasses import dataclass

from recoverlib.quant.planner import ModelShapes

WEIGHT_BYTES = 2  # bf16


@dataclass(frozen=True)
class Shapes:
    """The sizes of a Mixtral-style decoder that its FLOPs and bytes depend on."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    experts: int
    top_k: int
    vocab: int

    @classmethod
    def from_config(cls, cfg: dict) -> Shapes:
        """From a ``config.json``, read as the planner reads it (a dense model counts as one expert, always
        chosen)."""
        m = ModelShapes.from_config(cfg)
        return cls(m.hidden, m.intermediate, m.layers, m.heads, m.kv_heads, m.head_dim, max(m.experts, 1),
                   cfg.get("num_experts_per_tok", 1) if m.experts else 1, m.vocab)

    @property
    def attention_params(self) -> int:
        """q, k, v, o projections of one layer."""
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        return self.hidden * (2 * q + 2 * kv)

    @property
    def expert_params(self) -> int:
        """w1, w2, w3 of one expert."""
        return 3 * self.hidden * self.intermediate

    def lora_params(self, rank: int) -> int:
        """A rank-``rank`` LoRA on q, k, v, o of one layer (A and B)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return rank * sum(self.hidden + out for out in (q, kv, kv, q))


@dataclass(frozen=True)
class Job:
    """An ensemble run: ``prompt_lengths`` one per distinct prefill (row x adapter), each sampled ``samples``
    times for ``tokens`` new tokens (the first comes from the prefill, the rest from ``tokens - 1`` decode
    steps)."""

    prompt_lengths: tuple[int, ...]
    samples: int
    tokens: int
    lora_rank: int = 0

    @property
    def sequences(self) -> int:
        return len(self.prompt_lengths) * self.samples

    @property
    def generated(self) -> int:
        return self.sequences * self.tokens


@dataclass(frozen=True)
class Cost:
    """FLOPs and bytes read of one phase."""

    flops: float
    bytes: float

    def seconds(self, flops_per_s: float, bytes_per_s: float) -> float:
        """The roofline time: whichever of compute and memory takes longer."""
        return max(self.flops / flops_per_s, self.bytes / bytes_per_s)


def _token_flops(s: Shapes, rank: int) -> float:
    """Weight FLOPs of one token through every layer (attention, router, its top-k experts, LoRA)."""
    per_layer = s.attention_params + s.hidden * s.experts + s.top_k * s.expert_params + s.lora_params(rank)
    return 2.0 * per_layer * s.layers


def _attention_flops(s: Shapes, queries: int, keys: int) -> float:
    """QK^T and AV over all layers for ``queries`` tokens that each see ``keys`` positions on average."""
    return 4.0 * queries * keys * s.heads * s.head_dim * s.layers


def experts_touched(s: Shapes, tokens: int) -> float:
    """Expected experts of a layer that ``tokens`` tokens route to (each picks top-k of E, uniformly)."""
    return s.experts * (1.0 - (1.0 - s.top_k / s.experts) ** tokens)


def _weight_bytes(s: Shapes, tokens: int, rank: int) -> float:
    """Bytes of the weights a forward pass over ``tokens`` tokens reads (each weight once)."""
    per_layer = (s.attention_params + s.hidden * s.experts + experts_touched(s, tokens) * s.expert_params
                 + s.lora_params(rank))
    return WEIGHT_BYTES * (per_layer * s.layers + s.hidden * s.vocab)


def _kv_bytes(s: Shapes, positions: int) -> float:
    """Bytes of the K and V cache of ``positions`` positions, all layers."""
    return WEIGHT_BYTES * 2 * positions * s.kv_heads * s.head_dim * s.layers


def prefill_cost(s: Shapes, job: Job) -> Cost:
    """Every distinct prompt once, with its first token's logits."""
    tokens = sum(job.prompt_lengths)
    flops = (tokens * _token_flops(s, job.lora_rank)
             + sum(_attention_flops(s, n, (n + 1) / 2) for n in job.prompt_lengths)
             + 2.0 * len(job.prompt_lengths) * s.hidden * s.vocab)
    return Cost(flops, _weight_bytes(s, tokens, job.lora_rank) + _kv_bytes(s, tokens))


def decode_step_cost(s: Shapes, job: Job, step: int) -> Cost:
    """Decode step ``step`` (1-based): every sequence one token, at context prompt + ``step``."""
    seqs = job.sequences
    context = sum(n + step for n in job.prompt_lengths) * job.samples  # positions the step's queries see
    flops = (seqs * (_token_flops(s, job.lora_rank) + 2.0 * s.hidden * s.vocab)
             + _attention_flops(s, 1, 1) * context)
    return Cost(flops, _weight_bytes(s, seqs, job.lora_rank) + _kv_bytes(s, context))


@dataclass(frozen=True)
class Roofline:
    """The job's phases at a machine's ceilings, in seconds."""

    prefill_s: float
    decode_s: float
    prefill: Cost
    decode: Cost

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s


def roofline(s: Shapes, job: Job, prefill_flops_per_s: float, decode_flops_per_s: float,
             bytes_per_s: float) -> Roofline:
    """``job``'s roofline: the prefill at the prefill-shaped GEMM rate (or the bandwidth, if slower), each
    decode step at the larger of its compute and its bytes."""
    pre = prefill_cost(s, job)
    steps = [decode_step_cost(s, job, k) for k in range(1, job.tokens)]
    decode = Cost(sum(c.flops for c in steps), sum(c.bytes for c in steps))
    return Roofline(pre.seconds(prefill_flops_per_s, bytes_per_s),
                    sum(c.seconds(decode_flops_per_s, bytes_per_s) for c in steps), pre, decode)
