"""Top-p without a full sort keeps exactly the tokens vLLM's sort-based masking keeps."""

import pytest
import torch

from recoverlib.vllm_plugin.top_p import HEAD_WIDTHS, make_apply_top_k_top_p, top_p_mask_

sampler = pytest.importorskip("vllm.v1.sample.ops.topk_topp_sampler", reason="vLLM is not installed")

VOCAB = 2048
NEG = float("-inf")


def _logits(scales: list[float], seed: int = 0) -> torch.Tensor:
    """One row per scale: larger scale, more peaked distribution (float32, so no exact ties)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(VOCAB, generator=g) * s for s in scales])


def _reference(logits, k, p):
    return sampler.apply_top_k_top_p_pytorch(logits.clone(), k, p, allow_cpu_sync=True)


def _kept(logits: torch.Tensor) -> torch.Tensor:
    return logits != NEG


# Scales chosen so that rows close at width 16, at width 256, and only after a sort (nucleus > 256 tokens).
SCALES = [12.0, 8.0, 5.0, 3.0, 2.0, 1.0, 0.3]


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95])
def test_same_tokens_as_vllm_for_peaked_medium_and_flat_rows(top_p):
    logits = _logits(SCALES * 4)
    p = torch.full((logits.shape[0],), top_p)
    want = _reference(logits, None, p)
    got = top_p_mask_(logits.clone(), p, sampler.apply_top_k_top_p)
    assert torch.equal(_kept(got), _kept(want))
    torch.testing.assert_close(got[_kept(got)], want[_kept(want)])  # kept logits are untouched
    widths = _kept(want).sum(-1)
    assert widths.min() <= HEAD_WIDTHS[0] and widths.max() > HEAD_WIDTHS[-1]  # all three paths were used


def test_per_row_p_and_rows_without_top_p():
    logits = _logits(SCALES)
    p = torch.tensor([0.95, 1.0, 0.3, 0.8, 1.0, 0.99, 0.95])
    got = top_p_mask_(logits.clone(), p, sampler.apply_top_k_top_p)
    want = _reference(logits, None, p)
    assert torch.equal(_kept(got), _kept(want))
    assert _kept(got)[p == 1].all()  # p = 1 leaves the row alone


def test_with_top_k_as_vllm_applies_it():
    logits = _logits(SCALES * 2, seed=1)
    k = torch.tensor([5, 50, 2048, 300, 1, 20, 700] * 2)
    p = torch.full((logits.shape[0],), 0.9)
    apply = make_apply_top_k_top_p(sampler.apply_top_k_top_p, sampler.apply_top_k_only)
    assert torch.equal(_kept(apply(logits.clone(), k, p)), _kept(_reference(logits, k, p)))
    # No top-p: vLLM's own function (its top-k path needs no sort either).
    assert torch.equal(_kept(apply(logits.clone(), k, None)), _kept(_reference(logits, k, None)))


def test_the_most_likely_token_always_stays():
    logits = _logits([20.0, 0.5], seed=2)
    p = torch.tensor([1e-6, 1e-6])
    got = top_p_mask_(logits.clone(), p, sampler.apply_top_k_top_p)
    assert _kept(got).sum(-1).tolist() == [1, 1]
    assert torch.equal(got.argmax(-1), logits.argmax(-1))


def test_plugin_routes_the_cpu_sampler_through_it():
    from recoverlib.vllm_plugin import register

    register()
    register()
    fn = sampler.apply_top_k_top_p
    assert fn._recoverlib and not getattr(fn.__wrapped__, "_recoverlib", False)
    logits = _logits(SCALES, seed=3)
    p = torch.full((len(SCALES),), 0.95)
    assert torch.equal(_kept(fn(logits.clone(), None, p)), _kept(_reference(logits, None, p)))
