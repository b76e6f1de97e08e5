"""Greedy validation score of a saved base (plus an optional adapter): the yardstick of the trained-model
tests."""

from __future__ import annotations


def score_model(model_dir, rows, scorer, adapter_dir=None, batch_size: int = 32) -> tuple[float, list[str]]:
    """Greedy validation score of a saved base (plus an optional PEFT adapter, rendered with its prime).

    ``rows``: objects with ``original_text, rewritten_text, rewrite_prompt``. Returns ``(score,
    predictions)``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recoverlib.adapters import adapter_prime
    from recoverlib.training.evaluate import greedy_predictions

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prime = ""
    if adapter_dir is not None:
        from peft import PeftModel

        model, prime = PeftModel.from_pretrained(model, str(adapter_dir)), adapter_prime(adapter_dir)
    preds = greedy_predictions(model, tokenizer, [(r.original_text, r.rewritten_text) for r in rows],
                               prime=prime, batch_size=batch_size)
    return scorer.score(preds, [r.rewrite_prompt for r in rows]), preds
