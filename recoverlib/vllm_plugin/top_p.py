"""Top-p (nucleus) masking for vLLM's CPU sampler without sorting the whole vocabulary.

vLLM's CPU sampler applies top-p by sorting every row of the logits (batch x vocab) at every decode step; on
the tiny Mixtral at the default ``top_p=0.95`` that sort was about 40 % of the generation time. A language
model's nucleus is usually a handful of tokens, so the cut can be found among the ``k`` most likely tokens of
a row (``topk``, far cheaper than a sort), and only rows whose nucleus is wider than that are sorted as
before.

Same tokens kept as vLLM's sort-based ``apply_top_k_top_p_pytorch``: a token is masked when the probability
mass of the tokens more likely than it reaches ``p`` (the most likely token always stays). Two deliberate
differences, both without effect on what can be sampled: exact ties at the cut are resolved by ``topk``
instead of by an unstable sort (either is arbitrary), and rows with ``p >= 1`` are left untouched where vLLM
masks tokens whose probability underflows to zero.
"""

from __future__ import annotations

import torch

# Nucleus widths tried before falling back to a sort; a row is tried at a width only if it can fit there.
HEAD_WIDTHS = (16, 256)


def _keep_head(logits: torch.Tensor, rows: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor,
               p: torch.Tensor) -> None:
    """Mask all of ``logits[rows]`` except the nucleus, found in its ``vals``/``idx`` (sorted descending)."""
    more_likely = vals.cumsum(-1) - vals  # mass of the tokens ranked above each one
    kept = logits[rows].gather(1, idx).masked_fill_(more_likely >= p[:, None], float("-inf"))
    logits[rows] = torch.full_like(logits[rows], float("-inf")).scatter_(1, idx, kept)


def top_p_mask_(logits: torch.Tensor, p: torch.Tensor, sort_mask) -> torch.Tensor:
    """Mask, in place, the logits outside each row's top-``p`` nucleus; return ``logits``.

    ``logits``: (batch, vocab) float; ``p``: (batch,) in (0, 1]. ``sort_mask(logits, k, p)`` is vLLM's
    sort-based masking, used for the rows whose nucleus is wider than the largest of :data:`HEAD_WIDTHS`.
    """
    vocab = logits.shape[1]
    probs = logits.softmax(-1, dtype=torch.float32)
    rest = (p < 1).nonzero(as_tuple=True)[0]
    # What is known of each row's head: the mass of its `seen` most likely tokens and a bound on any other
    # token's probability. k more tokens add at most k times that bound: rows that cannot close are not tried.
    # Nor are rows spread over more tokens than the width (1 / sum p^2, the effective number of tokens): on a
    # flat distribution a failed topk would cost about as much as the sort that follows it.
    seen = torch.zeros_like(p, dtype=torch.long)
    mass = torch.zeros_like(probs[:, 0])
    bound = probs.amax(-1)
    spread = 1.0 / probs.square().sum(-1)
    for width in HEAD_WIDTHS:
        width = min(width, vocab)
        fits = (mass[rest] + (width - seen[rest]) * bound[rest] >= p[rest]) & (spread[rest] <= width)
        cand = rest[fits]
        if cand.numel():
            vals, idx = probs[cand].topk(width, dim=-1)
            seen[cand], mass[cand], bound[cand] = width, vals.sum(-1), vals[:, -1]
            closes = mass[cand] >= p[cand]
            done = cand[closes]
            if done.numel():
                _keep_head(logits, done, vals[closes], idx[closes], p[done])
                rest = rest[~torch.isin(rest, done)]
        if not rest.numel():
            return logits
    if rest.numel() == logits.shape[0]:  # no row closed early: sort in place, as vLLM does
        return sort_mask(logits, None, p)
    if rest.numel():
        logits[rest] = sort_mask(logits[rest], None, p[rest])
    return logits


def make_apply_top_k_top_p(original, top_k_only):
    """vLLM's ``apply_top_k_top_p(logits, k, p)`` with top-p by :func:`top_p_mask_` (top-k first, as vLLM
    does).

    ``original`` is vLLM's function (used when there is no top-p), ``top_k_only`` its sort-free top-k mask.
    """

    def apply_top_k_top_p(
        logits: torch.Tensor, k: torch.Tensor | None, p: torch.Tensor | None
    ) -> torch.Tensor:
        if p is None:
            return original(logits, k, p)
        if k is not None:
            logits = top_k_only(logits, k)
        return top_p_mask_(logits, p, original)

    return apply_top_k_top_p
