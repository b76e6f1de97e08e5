"""The float32-GEMM cure for 16-bit linears that vLLM leaves to torch's ``linear``: where it takes a layer,
what it computes (float32 sums, within bf16 rounding of vLLM's own path), an engine with it on and off."""

from __future__ import annotations

import types

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm", reason="vLLM is not installed")

from recoverlib.vllm_plugin import CURES  # noqa: E402
from recoverlib.vllm_plugin.moe_gemm import onednn_serves  # noqa: E402
from recoverlib.vllm_plugin.upcast_linear import fallback_code, install, upcast_linear  # noqa: E402


def _dispatch():
    """vLLM's own dispatch (unwrapped if the plugin is already in this process) behind a fresh stand-in module
    with the cure installed."""
    from vllm.model_executor.layers import utils
    from vllm.platforms import current_platform

    current_platform.import_kernels()
    dispatch = utils.dispatch_cpu_unquantized_gemm
    original = getattr(dispatch, "__wrapped__", dispatch)
    stand_in = types.SimpleNamespace(dispatch_cpu_unquantized_gemm=original)
    install(stand_in)
    return stand_in.dispatch_cpu_unquantized_gemm


def _layer(dtype, out_features=512, in_features=256, bias=True):
    gen = torch.Generator().manual_seed(out_features)
    layer = torch.nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_features, in_features, generator=gen) * 0.05)
    return layer.to(dtype)


def test_vllms_fallback_is_found():
    from vllm.model_executor.layers import utils

    dispatch = utils.dispatch_cpu_unquantized_gemm
    original = getattr(dispatch, "__wrapped__", dispatch)
    assert "functional" in fallback_code(original).co_names


@pytest.mark.parametrize("bias", [True, False])
def test_takes_only_what_vllm_leaves_to_torch_and_computes_the_same(bias):
    dispatch = _dispatch()
    layer = _layer(torch.bfloat16, bias=bias)
    weight, b = layer.weight.detach().clone(), None if layer.bias is None else layer.bias.detach().clone()
    dispatch(layer, remove_weight=True)
    if onednn_serves():
        assert layer.cpu_linear is not upcast_linear  # oneDNN (or AMX) serves it: vLLM's choice stands
        return
    assert layer.cpu_linear is upcast_linear and layer.weight.dtype == torch.bfloat16  # no float32 copy kept
    x = torch.randn(33, 256, generator=torch.Generator().manual_seed(1)).bfloat16()
    got = layer.cpu_linear(x, layer.weight, layer.bias)
    exact = torch.nn.functional.linear(x.double(), weight.double(), None if b is None else b.double())
    theirs = torch.nn.functional.linear(x, weight, b)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), exact, rtol=1.6e-2, atol=1e-2)
    assert (got.double() - exact).abs().max() <= (theirs.double() - exact).abs().max() + 1e-2


def test_float32_layers_keep_vllms_choice():
    dispatch = _dispatch()
    layer = _layer(torch.float32)
    dispatch(layer, remove_weight=True)
    assert layer.cpu_linear is not upcast_linear


COUNTS = {
    "served": "lambda mod: getattr(getattr(mod, 'cpu_linear', None), '__name__', '') == 'upcast_linear'",
    "left_to_torch": "lambda mod: getattr(getattr(mod, 'cpu_linear', None), '__name__', '') == '<lambda>'"
                     " and 'functional' in mod.cpu_linear.__code__.co_names",
}


@pytest.mark.slow
def test_an_engine_with_the_cure_generates_as_without(tiny_model, greedy):
    """The tiny Mixtral in bf16, greedy, cure on and off: where the cure applies (AVX2 alone) it takes every
    layer vLLM left to torch's linear (attention, routers, the LM head; 8 here) and no other, every prompt's
    first token is the same, its log-probability within bf16 rounding, and most 8-token continuations equal
    (random weights: near-ties)."""
    on = greedy(tiny_model, list(CURES), COUNTS)
    off = greedy(tiny_model, [c for c in CURES if c != "vllm-cpu-upcast-linear"], COUNTS)
    assert off["served"] == 0 and on["served"] + on["left_to_torch"] == off["left_to_torch"]
    if not onednn_serves():
        assert on["served"] == off["left_to_torch"] >= 5 and on["left_to_torch"] == 0
    assert [t[0] for t in on["tokens"]] == [t[0] for t in off["tokens"]]
    assert max(abs(a - b) for a, b in zip(on["first_logprob"], off["first_logprob"], strict=True)) < 0.05
    same = sum(a == b for a, b in zip(on["tokens"], off["tokens"], strict=True))
    assert same >= 12, f"{same} of 16 greedy continuations equal"
