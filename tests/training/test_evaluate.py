"""Constant-prompt baseline and in-memory greedy predictions."""

from __future__ import annotations

from recoverlib.training.evaluate import best_constant_prompt, greedy_predictions


def test_best_constant_prompt_picks_the_most_central_candidate(scorer):
    truths = ["Make the text more formal."] * 3 + [
        "Rewrite this in a formal tone.",
        "Turn it into a pirate poem.",
    ]
    prompt, score = best_constant_prompt(truths, scorer=scorer)
    assert prompt == "Make the text more formal."
    assert abs(score - scorer.score([prompt] * len(truths), truths)) < 1e-4
    other, _ = best_constant_prompt(
        truths, candidates=["Turn it into a pirate poem.", "banana"], scorer=scorer
    )
    assert other == "Turn it into a pirate poem."


def test_greedy_predictions_keep_the_prime(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    preds = greedy_predictions(
        model, tok, [("a b c.", "A B C."), ("x.", "y.")], prime="Rewrite", max_new_tokens=4
    )
    assert len(preds) == 2 and all(p.startswith("Rewrite") for p in preds)
    assert not model.training
