"""16-bit dense linears through float32 GEMMs where vLLM's CPU backend is left with torch's 16-bit ``linear``.

vLLM 0.32 gives every unquantized linear on a CPU (attention, the LM head, a dense model's MLP) a GEMM chosen
when its weights are processed (``dispatch_cpu_unquantized_gemm``): zentorch, the AMX kernel, oneDNN, and last
``torch.nn.functional.linear``. On an x86 CPU with AVX2 alone oneDNN has no bf16 GEMM, so every linear takes
that last branch, and torch's bf16 ``linear`` there is a slow reference path. Measured on an AMD EPYC (AVX2
only), one thread, Mixtral's shapes: q/k/v at 1,024 rows 9.3 s against 1.4 s through a float32 GEMM with the
weight converted at every call (6.5x), the o projection 7.4x, at 64 rows (a decode step) 1.6-1.7x; the
results agree within bf16 rounding (the float32 sum is the more exact one). So where vLLM ends in that branch
for a 16-bit weight, the layer's GEMM converts input and weight to float32, runs it, and rounds the result
back: the weight stays in 16 bits (no memory is added but the transient float32 copy of one weight).
"""

from __future__ import annotations

import torch

SIXTEEN_BIT = (torch.bfloat16, torch.float16)


def upcast_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``linear(x, weight, bias)`` computed in float32, returned in ``x``'s dtype."""
    out = torch.nn.functional.linear(x.float(), weight.float(), None if bias is None else bias.float())
    return out.to(x.dtype)


def fallback_code(dispatch) -> object:
    """The code object of the ``torch.nn.functional.linear`` lambda that ``dispatch`` (vLLM's
    ``dispatch_cpu_unquantized_gemm``) assigns last, when no faster GEMM took the layer."""
    found = [c for c in dispatch.__code__.co_consts
             if getattr(c, "co_name", "") == "<lambda>" and "functional" in c.co_names
             and "zentorch" not in c.co_names]
    if len(found) != 1:
        raise RuntimeError(f"expected one torch-linear fallback in {dispatch.__qualname__},"
                           f" found {len(found)}")
    return found[0]


def install(utils) -> None:
    """Wrap ``utils.dispatch_cpu_unquantized_gemm`` (``utils``: ``vllm.model_executor.layers.utils``): a
    16-bit layer it leaves on torch's ``linear`` gets :func:`upcast_linear`; other layers are unchanged."""
    original = utils.dispatch_cpu_unquantized_gemm
    fallback = fallback_code(original)

    def dispatch_cpu_unquantized_gemm(layer, remove_weight):
        original(layer, remove_weight)
        chosen = getattr(getattr(layer, "cpu_linear", None), "__code__", None)
        if chosen is fallback and layer.weight.dtype in SIXTEEN_BIT:
            layer.cpu_linear = upcast_linear

    dispatch_cpu_unquantized_gemm.__wrapped__, dispatch_cpu_unquantized_gemm._recoverlib = original, True
    dispatch_cpu_unquantized_gemm.__doc__ = original.__doc__
    utils.dispatch_cpu_unquantized_gemm = dispatch_cpu_unquantized_gemm
