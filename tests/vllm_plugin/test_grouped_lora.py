"""The grouped LoRA products equal vLLM's torch ops where those are right, and give nothing to slot -1."""

import pytest
import torch

from recoverlib.vllm_plugin.grouped_lora import expand, shrink

lora_ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops", reason="vLLM is not installed")

T, IN, R, OUT, SLOTS = 40, 16, 4, 24, 3


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, IN, generator=g)
    a = torch.randn(SLOTS, 1, R, IN, generator=g)
    b = torch.randn(SLOTS, 1, OUT, R, generator=g)
    h = torch.randn(T, R, generator=g)
    return x, a, b, h


@pytest.mark.parametrize("indices", [torch.arange(T) % SLOTS, torch.full((T,), 1)])
def test_shrink_matches_vllm(data, indices):
    x, a, _, _ = data
    want, got = torch.zeros(T, R), torch.zeros(T, R)
    lora_ops.bgmv_shrink(x, a, want, indices, 0.5)
    shrink(x, a, got, indices, 0.5)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("add", [True, False])
@pytest.mark.parametrize("indices", [torch.arange(T) % SLOTS, torch.full((T,), 2)])
def test_expand_slice_matches_vllm(data, indices, add):
    _, _, b, h = data
    base = torch.randn(T, 3 * OUT, generator=torch.Generator().manual_seed(1))
    want, got = base.clone(), base.clone()
    lora_ops.bgmv_expand_slice(h, b, want, indices, OUT, OUT, add)
    expand(h, b, got, indices, OUT, OUT, add)
    torch.testing.assert_close(got, want)


def test_expand_full_width_matches_vllm(data):
    _, _, b, h = data
    indices = torch.arange(T) % SLOTS
    want, got = torch.ones(T, OUT), torch.ones(T, OUT)
    lora_ops.bgmv_expand(h, b, want, indices, True)
    expand(h, b, got, indices, 0, None, True)
    torch.testing.assert_close(got, want)


def test_tokens_without_adapter_get_nothing(data):
    x, a, b, h = data
    indices = torch.tensor([0, -1, 1, -1] * (T // 4))
    y = torch.full((T, R), 7.0)
    shrink(x, a, y, indices, 1.0)
    assert torch.all(y[indices < 0] == 0)
    out = torch.ones(T, OUT)
    expand(h, b, out, indices, 0, None, add=True)
    assert torch.all(out[indices < 0] == 1)  # nothing added
    out = torch.ones(T, OUT)
    expand(h, b, out, indices, 0, None, add=False)
    assert torch.all(out[indices < 0] == 0)  # written as zero, not another adapter's product
