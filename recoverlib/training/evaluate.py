"""Scoring models held in memory and the constant-prompt baseline, on rows whose prompts are known.

Used while training (per-epoch validation score) and to print the baseline every trained model must beat:
the single prompt that, predicted for every row, scores best.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recoverlib.engines.base import decode_completions
from recoverlib.metric import Scorer, sharpened_cosine
from recoverlib.prompt import RecoveryTemplate, clean_prediction


def best_constant_prompt(
    train_prompts: Sequence[str], candidates: Sequence[str] | None = None, scorer=None, max_truths: int = 2000
) -> tuple[str, float]:
    """The candidate with the best mean sharpened cosine against ``train_prompts``; returns ``(prompt,
    score)``.

    ``candidates`` default to the distinct train prompts. ``scorer``: a :class:`recoverlib.metric.Scorer`
    (default MiniLM). Truths are embedded once (duplicates once), at most ``max_truths`` of them (a seeded
    evenly spaced subset), so this takes seconds for thousands of rows.
    """

    scorer = scorer or Scorer("minilm", progress=False)
    truths = list(train_prompts)
    if len(truths) > max_truths:
        truths = [truths[i] for i in np.linspace(0, len(truths) - 1, max_truths).astype(int)]
    cands = sorted(set(candidates if candidates is not None else truths))
    uniq, counts = np.unique(np.array(truths, dtype=object), return_counts=True)
    emb_c, emb_t = scorer.embed(cands), scorer.embed(list(uniq))
    # (candidates, distinct truths) sharpened cosine, weighted by how often each truth occurs
    sims = np.stack([sharpened_cosine(np.broadcast_to(c, emb_t.shape), emb_t, scorer.power) for c in emb_c])
    means = sims @ counts / counts.sum()
    best = int(np.argmax(means))
    return cands[best], float(means[best])


def greedy_predictions(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    template: RecoveryTemplate | None = None,
    prime: str = "",
    batch_size: int = 32,
    max_new_tokens: int = 32,
    max_prompt_tokens: int = 448,
) -> list[str]:
    """Greedy, cleaned predictions of an in-memory HF model for ``(original, rewritten)`` pairs.

    Same rendering and cleaning as the engines (prime kept in front). The model's train/eval mode is restored.
    """
    import torch

    template = template or RecoveryTemplate()
    prompts = [template.render_fitted(tokenizer, o, r, max_prompt_tokens, prime)[0] for o, r in pairs]
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            with torch.no_grad():
                # TRL turns router logits on for the aux loss; with padding they break generation's forward
                ids = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    output_router_logits=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            texts = decode_completions(tokenizer, ids[:, enc["input_ids"].shape[1] :])
            out += [clean_prediction(t, template, prime=prime) for t in texts]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out
