"""Grouped LoRA products for vLLM's CPU punica wrapper: one matmul per adapter in the batch.

vLLM's CPU ops (``vllm/lora/ops/torch_ops``) gather a weight matrix *per token* (``weights[indices]``, shape
tokens x out x rank), convert it, and run a batched einsum; prefill first expands per-sequence indices with
``repeat_interleave``. On the tiny Mixtral that was half of the decode time with 4 adapters. Here tokens are
grouped by adapter slot, and each group is one ``x @ W.T``. Tokens without an adapter (slot -1) get nothing;
vLLM's gather picked the *last* slot for them, so base requests batched with adapter requests got an adapter.

Semantics otherwise follow the torch ops: shrink writes ``scale * x @ A.T`` into ``y[:, :rank]``; expand adds
(or writes) ``x @ B.T`` into ``y[:, offset:offset + size]``.
"""

from __future__ import annotations

import torch


def _groups(indices: torch.Tensor) -> list[tuple[int, torch.Tensor | None]]:
    """``[(slot, token rows)]`` for each adapter slot present; rows ``None`` when one slot covers every
    token."""
    slots = torch.unique(indices)
    if slots.numel() == 1:
        return [(int(slots[0]), None)]
    return [(int(s), (indices == s).nonzero(as_tuple=True)[0]) for s in slots]


def _matrix(weights: torch.Tensor, slot: int, dtype: torch.dtype) -> torch.Tensor:
    w = weights[slot]
    return (w.squeeze(0) if w.dim() == 3 else w).to(dtype)


def shrink(
    x: torch.Tensor, weights: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, scale: float
) -> None:
    """``y[t, :rank] = scale * x[t] @ A[slot(t)].T``; zero for tokens without an adapter."""
    rank = weights.shape[-2]
    out = y[:, :rank]
    x = x.to(y.dtype)
    for slot, rows in _groups(indices):
        if slot < 0:
            if rows is None:
                out.zero_()
            else:
                out[rows] = 0
            continue
        a = _matrix(weights, slot, y.dtype)
        if rows is None:
            torch.matmul(x, a.T, out=out) if out.is_contiguous() else out.copy_(x @ a.T)
            out.mul_(scale)
        else:
            out[rows] = scale * (x[rows] @ a.T)


def expand(x: torch.Tensor, weights: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
           offset: int, size: int | None, add: bool) -> None:
    """``y[t, offset:offset+size] (+)= x[t] @ B[slot(t)].T``; tokens without an adapter get zero (nothing
    added)."""
    size = min(weights.shape[-2], y.shape[1] - offset) if size is None else size
    out = y[:, offset : offset + size]
    x = x.to(y.dtype)
    groups = _groups(indices)
    if len(groups) == 1 and groups[0][0] >= 0:  # one adapter for the whole batch: no gather, no scatter
        res = x @ _matrix(weights, groups[0][0], y.dtype)[:size].T
    else:
        res = torch.zeros(out.shape, dtype=y.dtype)  # tokens without an adapter stay zero
        for slot, rows in groups:
            if slot >= 0:
                res[rows] = x[rows] @ _matrix(weights, slot, y.dtype)[:size].T
    out.add_(res) if add else out.copy_(res)


def install(wrapper_cls) -> None:
    """Route vLLM's ``PunicaWrapperCPU`` through the grouped products (prefill and decode alike).

    Prefill uses ``token_lora_indices`` (one slot per token) directly instead of re-expanding the per-sequence
    indices in every layer. Calls whose shapes differ from one row per token keep vLLM's own path.
    """
    originals = {name: getattr(wrapper_cls, name) for name in (
        "_shrink_prefill", "_shrink_decode", "_expand_prefill", "_expand_decode",
        "_expand_slice_prefill", "_expand_slice_decode")}

    def fits(self, x, y) -> bool:
        return x.shape[0] == y.shape[0] == self.token_lora_indices.shape[0]

    def make_shrink(name):
        def method(self, y, x, w_t_all, scale):
            if not fits(self, x, y):
                return originals[name](self, y, x, w_t_all, scale)
            shrink(x, w_t_all, y, self.token_lora_indices, scale)
        return method

    def make_expand(name):
        def method(self, y, x, w_t_all, add_inputs):
            if not fits(self, x, y):
                return originals[name](self, y, x, w_t_all, add_inputs)
            expand(x, w_t_all, y, self.token_lora_indices, 0, None, add_inputs)
        return method

    def make_expand_slice(name):
        def method(self, y, x, w_t_all, y_offset, y_slice_size, add_inputs):
            if not fits(self, x, y):
                return originals[name](self, y, x, w_t_all, y_offset, y_slice_size, add_inputs)
            expand(x, w_t_all, y, self.token_lora_indices, y_offset, y_slice_size, add_inputs)
        return method

    for name, make in (
        ("_shrink_prefill", make_shrink),
        ("_shrink_decode", make_shrink),
        ("_expand_prefill", make_expand),
        ("_expand_decode", make_expand),
        ("_expand_slice_prefill", make_expand_slice),
        ("_expand_slice_decode", make_expand_slice),
    ):
        method = make(name)
        method.__wrapped__ = originals[name]
        method._recoverlib = True
        setattr(wrapper_cls, name, method)
