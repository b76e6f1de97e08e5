"""Unquantized MoE experts on a CPU without AMX as one oneDNN GEMM per expert.

On a CPU without AMX, vLLM 0.32 runs a 16-bit Mixtral's experts through its portable grouped GEMM
(``CPUUnquantizedExperts``, ISA ``vec``: ``_C::cpu_fused_moe`` on weights it prepacks for it). Measured on
an AMD EPYC with AVX-512 BF16, one thread, at Mixtral-8x7B's full width (``benchmarks/roofline.py``): about
0.09 TFLOP/s at every batch, where oneDNN's bf16 GEMM (what vLLM itself uses for every dense linear on a CPU,
through ``create_onednn_mm``) reaches 0.21. So here each expert's ``w13`` and ``w2`` become two oneDNN
GEMMs, as vLLM builds them for its linear layers: the tokens routed to an expert are gathered (one sort of
the routing), run through ``w13``, ``silu(gate) * up`` (vLLM's own op) and ``w2``, weighted by their routing
weight and summed in float32 into their rows. The same arithmetic as vLLM's kernel: outputs agree within
bf16 rounding (``tests/vllm_plugin/test_moe_gemm.py``).

Where it applies: the ``vec`` ISA (x86 without AMX; the AMX grouped GEMM was not measured against it), bf16
weights (the case measured; float32 keeps vLLM's kernel), SiLU experts without biases, no expert
parallelism, no zentorch, and a oneDNN that has a bf16 GEMM on this CPU (on AVX2 alone it has none: vLLM's
own linear layers fall back to ``torch`` there, and torch's bf16 ``linear`` runs at about 0.3x the rate of
vLLM's grouped GEMM). Anything else keeps vLLM's kernel, decided once per layer when its weights are
processed. The oneDNN handlers hold their own packed copy of the weights, and the layer's parameters are
then replaced by zero-stride views of their shape (vLLM reads the expert count and sizes from them), so the
experts take the memory they took before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ISA = "vec"  # vLLM's portable grouped-GEMM ISA; the one this cure replaces
PRIMITIVE_CACHE = 32  # oneDNN primitives cached per handler (by batch size), as vLLM's linear layers do


@dataclass(frozen=True)
class ExpertGemms:
    """Per expert, the oneDNN handlers of ``w13`` (hidden -> 2 x intermediate) and ``w2`` (back)."""

    w13: tuple
    w2: tuple
    intermediate: int

    @classmethod
    def of(cls, w13: torch.Tensor, w2: torch.Tensor) -> ExpertGemms:
        """Handlers for ``w13`` (experts, 2 x intermediate, hidden) and ``w2`` (experts, hidden,
        intermediate)."""
        from vllm import _custom_ops as ops

        return cls(tuple(ops.create_onednn_mm(w.t(), PRIMITIVE_CACHE) for w in w13),
                   tuple(ops.create_onednn_mm(w.t(), PRIMITIVE_CACHE) for w in w2), w2.shape[-1])


def onednn_serves(dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether this CPU's oneDNN (through vLLM's kernels, imported) has a GEMM for ``dtype`` weights."""
    from vllm import _custom_ops as ops

    try:
        ops.create_onednn_mm(torch.zeros(32, 16, dtype=dtype).t(), 1)
    except RuntimeError:
        return False
    return True


def experts_forward(out: torch.Tensor, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                    gemms: ExpertGemms, weighted: bool = True) -> None:
    """``out[t] = sum_k w[t, k] * expert_{id[t, k]}(x[t])`` for every token ``t``, one GEMM pair per expert.

    ``x``: (tokens, hidden); ``topk_weights``/``topk_ids``: (tokens, k); ``weighted=False`` leaves the routing
    weights out (vLLM applied them to ``x`` already).
    """
    from vllm import _custom_ops as ops

    tokens, k = topk_ids.shape
    flat = topk_ids.reshape(-1).long()
    order = torch.argsort(flat, stable=True)  # (token, slot) pairs grouped by expert
    counts = torch.bincount(flat, minlength=len(gemms.w13)).tolist()
    rows = order // k
    xs = x.index_select(0, rows)
    ys = torch.empty_like(xs)
    start = 0
    for expert, n in enumerate(counts):
        if n == 0:
            continue
        up = ops.onednn_mm(gemms.w13[expert], xs[start:start + n], None)
        act = torch.empty(n, gemms.intermediate, dtype=x.dtype)
        torch.ops._C.silu_and_mul(act, up)
        ys[start:start + n] = ops.onednn_mm(gemms.w2[expert], act, None)
        start += n
    acc = torch.zeros(tokens, x.shape[1], dtype=torch.float32)
    contrib = ys.float()
    if weighted:
        contrib.mul_(topk_weights.reshape(-1)[order].float().unsqueeze(1))
    acc.index_add_(0, rows, contrib)
    out.copy_(acc)


def applies(experts, layer) -> bool:
    """Whether this cure serves ``layer``'s experts: vLLM's ``vec`` grouped GEMM on plain SiLU experts."""
    from vllm.model_executor.kernels.linear.zentorch_utils import is_zentorch_moe_supported
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation

    weights = layer.w13_weight
    return (type(experts).isa == ISA and not is_zentorch_moe_supported(layer)
            and experts.moe_config.activation == MoEActivation.SILU
            and weights.dtype == torch.bfloat16 and weights.dim() == 3
            and getattr(layer, "w13_bias", None) is None and getattr(layer, "w2_bias", None) is None
            and getattr(layer, "expert_map", None) is None)


def _placeholder(weight: torch.Tensor) -> torch.Tensor:
    """A tensor of ``weight``'s shape and dtype that holds one element (zero strides)."""
    return torch.zeros(1, dtype=weight.dtype).expand(weight.shape)


def install(experts_cls) -> None:
    """Patch vLLM's ``CPUUnquantizedExperts`` (``experts_cls``): layers it serves on the ``vec`` ISA get
    per-expert oneDNN GEMMs when their weights are processed; every other layer keeps vLLM's kernel."""
    from vllm.model_executor.utils import replace_parameter

    process, apply = experts_cls.process_weights_after_loading, experts_cls.apply

    def process_weights_after_loading(self, layer):
        if not applies(self, layer):
            return process(self, layer)
        try:
            self._recoverlib_gemms = ExpertGemms.of(layer.w13_weight.data, layer.w2_weight.data)
        except RuntimeError:  # oneDNN has no GEMM of this dtype on this CPU: vLLM's kernel serves it
            return process(self, layer)
        for name in ("w13_weight", "w2_weight"):
            replace_parameter(layer, name, _placeholder(getattr(layer, name)))
        return None

    def apply_experts(self, output, hidden_states, w1, w2, topk_weights, topk_ids, activation,
                      global_num_experts, expert_map, a1q_scale, a2_scale, workspace13, workspace2,
                      expert_tokens_meta, apply_router_weight_on_input):
        gemms = getattr(self, "_recoverlib_gemms", None)
        if gemms is None:
            return apply(self, output, hidden_states, w1, w2, topk_weights, topk_ids, activation,
                         global_num_experts, expert_map, a1q_scale, a2_scale, workspace13, workspace2,
                         expert_tokens_meta, apply_router_weight_on_input)
        experts_forward(output, hidden_states, topk_weights, topk_ids, gemms,
                        weighted=not apply_router_weight_on_input)
        return None

    for name, fn, original in (("process_weights_after_loading", process_weights_after_loading, process),
                               ("apply", apply_experts, apply)):
        fn.__wrapped__, fn._recoverlib = original, True
        fn.__name__, fn.__doc__ = original.__name__, original.__doc__
        setattr(experts_cls, name, fn)
