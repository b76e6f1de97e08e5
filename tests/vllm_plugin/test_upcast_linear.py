"""The float32-GEMM cure for 16-bit linears that vLLM leaves to torch's ``linear``: where it takes a layer,
what it computes (float32 sums, within bf16 rounding of vLLM's own path), an engine with it on and off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm", reason="vLLM is not installed")

from recoverlib.vllm_plugin import CURES, DISABLE_ENV  # noqa: E402
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


GREEDY = """
import json, sys
from vllm import LLM, SamplingParams
llm = LLM(sys.argv[1], enforce_eager=True, seed=0, max_model_len=512, block_size=32, dtype="bfloat16")
prompts = [{"prompt_token_ids": [3 + (7 * i + 11 * j) % 2000 for j in range(20 + i)]} for i in range(16)]
outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8, logprobs=0), use_tqdm=False)
gemm = lambda mod: getattr(mod, "cpu_linear", None)
name = lambda mod: getattr(gemm(mod), "__name__", "")
torch_linear = lambda mod: name(mod) == "<lambda>" and "functional" in gemm(mod).__code__.co_names
served = llm.apply_model(lambda m: sum(name(mod) == "upcast_linear" for mod in m.modules()))[0]
left = llm.apply_model(lambda m: sum(torch_linear(mod) for mod in m.modules()))[0]
print(json.dumps({"served": served, "left_to_torch": left,
                  "tokens": [list(o.outputs[0].token_ids) for o in outs],
                  "first_logprob": [next(iter(o.outputs[0].logprobs[0].values())).logprob for o in outs]}))
"""


def _greedy(model, cures: list[str]) -> dict:
    env = {**os.environ, DISABLE_ENV: ",".join(cures), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    res = subprocess.run([sys.executable, "-c", GREEDY, str(model)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_an_engine_with_the_cure_generates_as_without(tiny_model):
    """The tiny Mixtral in bf16, greedy, cure on and off: where the cure applies (AVX2 alone) it takes every
    layer vLLM left to torch's linear (attention, routers, the LM head; 8 here) and no other, every prompt's
    first token is the same, its log-probability within bf16 rounding, and most 8-token continuations equal
    (random weights: near-ties)."""
    on = _greedy(tiny_model, list(CURES))
    off = _greedy(tiny_model, [c for c in CURES if c != "vllm-cpu-upcast-linear"])
    assert off["served"] == 0 and on["served"] + on["left_to_torch"] == off["left_to_torch"]
    if not onednn_serves():
        assert on["served"] == off["left_to_torch"] >= 5 and on["left_to_torch"] == 0
    assert [t[0] for t in on["tokens"]] == [t[0] for t in off["tokens"]]
    assert max(abs(a - b) for a, b in zip(on["first_logprob"], off["first_logprob"], strict=True)) < 0.05
    same = sum(a == b for a, b in zip(on["tokens"], off["tokens"], strict=True))
    assert same >= 12, f"{same} of 16 greedy continuations equal"
