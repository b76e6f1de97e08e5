"""The experts-as-oneDNN-GEMMs cure against vLLM's own CPU MoE kernel: the same outputs within bf16 rounding,
op by op and through a whole engine."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm", reason="vLLM is not installed")

from recoverlib.vllm_plugin import CURES  # noqa: E402
from recoverlib.vllm_plugin.moe_gemm import ExpertGemms, experts_forward, onednn_serves  # noqa: E402

E, H, INTER, K = 4, 128, 256, 2  # the tiny Mixtral's experts


def _kernels(gemms: bool = True):
    """vLLM's CPU ops; ``gemms``: skip where this CPU's oneDNN has no bf16 GEMM (the cure stands aside)."""
    from vllm import _custom_ops as ops
    from vllm.platforms import current_platform

    current_platform.import_kernels()
    if gemms and not onednn_serves():
        pytest.skip("oneDNN has no bf16 GEMM on this CPU (AVX2 only): the cure leaves vLLM's kernel")
    return ops


def _routing(tokens: int, gen: torch.Generator, skip_expert: int | None = None):
    logits = torch.randn(tokens, E, generator=gen)
    if skip_expert is not None:
        logits[:, skip_expert] = -1e9  # an expert no token reaches
    weights, ids = torch.topk(torch.softmax(logits, -1), K, -1)
    return (weights / weights.sum(-1, keepdim=True)).float().contiguous(), ids.int().contiguous()


@pytest.mark.parametrize(("tokens", "skip"), [(1, None), (7, None), (64, None), (33, 2)])
def test_equals_vllms_cpu_kernel(tokens, skip):
    ops = _kernels()
    gen = torch.Generator().manual_seed(tokens)
    w13 = (torch.randn(E, 2 * INTER, H, generator=gen) * 0.05).to(torch.bfloat16)
    w2 = (torch.randn(E, H, INTER, generator=gen) * 0.05).to(torch.bfloat16)
    x = (torch.randn(tokens, H, generator=gen)).to(torch.bfloat16)
    weights, ids = _routing(tokens, gen, skip)
    theirs, ours = torch.empty_like(x), torch.empty_like(x)
    packed = [ops.cpu_prepack_moe_weight(w, "vec") for w in (w13, w2)]
    ops.cpu_fused_moe(theirs, x, *packed, None, None, weights, ids, "silu", "vec", False)
    experts_forward(ours, x, weights, ids, ExpertGemms.of(w13, w2))
    err = (ours.float() - theirs.float()).norm() / theirs.float().norm()
    assert err < 1e-2, f"relative error {err:.2e}"


def test_weights_already_applied_are_not_applied_again():
    _kernels()
    gen = torch.Generator().manual_seed(0)
    w13 = (torch.randn(E, 2 * INTER, H, generator=gen) * 0.05).to(torch.bfloat16)
    w2 = (torch.randn(E, H, INTER, generator=gen) * 0.05).to(torch.bfloat16)
    x = torch.randn(5, H, generator=gen).to(torch.bfloat16)
    weights, ids = _routing(5, gen)
    gemms = ExpertGemms.of(w13, w2)
    weighted, unweighted = torch.empty_like(x), torch.empty_like(x)
    experts_forward(weighted, x, weights, ids, gemms)
    experts_forward(unweighted, x, weights, ids, gemms, weighted=False)
    one = torch.ones_like(weights)
    expected = torch.empty_like(x)
    experts_forward(expected, x, one, ids, gemms)
    assert torch.equal(unweighted, expected) and not torch.equal(weighted, unweighted)


SERVED = {"served": "lambda mod: hasattr(getattr(getattr(getattr(mod, 'quant_method', None), 'moe_kernel',"
                     " None), 'fused_experts', None), '_recoverlib_gemms')"}


@pytest.mark.slow
def test_an_engine_with_the_cure_generates_as_vllms_kernel(tiny_model, greedy):
    """The tiny Mixtral (2 MoE layers) greedy, cure on and off: the first token of every prompt equal, its
    log-probability within bf16 rounding, and most 8-token continuations equal (random weights: near-ties)."""
    _kernels(gemms=False)
    if not hasattr(torch.ops._C, "cpu_fused_moe"):
        pytest.skip("this vLLM build has no CPU MoE kernel")
    on = greedy(tiny_model, list(CURES), SERVED)
    off = greedy(tiny_model, [c for c in CURES if c != "vllm-cpu-moe-gemm"], SERVED)
    serves = onednn_serves() and not torch.cpu._is_amx_tile_supported()  # vLLM's AMX kernel is left alone
    assert on["served"] == (2 if serves else 0) and off["served"] == 0
    assert [t[0] for t in on["tokens"]] == [t[0] for t in off["tokens"]]
    assert max(abs(a - b) for a, b in zip(on["first_logprob"], off["first_logprob"], strict=True)) < 0.05
    same = sum(a == b for a, b in zip(on["tokens"], off["tokens"], strict=True))
    assert same >= 12, f"{same} of 16 greedy continuations equal"
