import pytest

from recoverlib.prompt import RESPONSE_PREFIX, RecoveryTemplate, clean_prediction


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_render_is_chat_formatted_and_ends_with_prefix(tokenizer):
    prompt = RecoveryTemplate().render(tokenizer, "the cat", "THE CAT")
    assert prompt.startswith("<s>[INST]")
    assert "the cat" in prompt and "THE CAT" in prompt
    assert prompt.endswith(RESPONSE_PREFIX)


def test_prime_is_the_last_text_of_the_prompt(tokenizer):
    assert RecoveryTemplate().render(tokenizer, "a", "b", prime="Rewrite").endswith(RESPONSE_PREFIX + " Rewrite")


def test_long_texts_are_truncated_to_fit(tokenizer):
    tpl = RecoveryTemplate()
    long_text = "word " * 3000
    prompt, cut = tpl.render_fitted(tokenizer, long_text, "short rewrite", max_prompt_tokens=200)
    assert cut
    assert len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= 200
    assert "short rewrite" in prompt  # the short text keeps all of itself
    assert prompt.endswith(RESPONSE_PREFIX)


def test_short_texts_are_not_truncated(tokenizer):
    prompt, cut = RecoveryTemplate().render_fitted(tokenizer, "a b", "c d", max_prompt_tokens=500)
    assert not cut and prompt == RecoveryTemplate().render(tokenizer, "a b", "c d")


def test_impossible_budget_does_not_crash(tokenizer):
    prompt, cut = RecoveryTemplate().render_fitted(tokenizer, "x " * 100, "y " * 100, max_prompt_tokens=5)
    assert cut and RESPONSE_PREFIX in prompt


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (' "Rewrite this as a poem."', "Rewrite this as a poem."),
        (f"{RESPONSE_PREFIX} Make it formal.", "Make it formal."),
        ("Make it short.</s>garbage", "Make it short."),
        ("Make it short.\n\nExplanation: ...", "Make it short."),
        ("  '“Turn it into a haiku”'  ", "Turn it into a haiku"),
        ("a\x02b\tc", "ab c"),
        ("", ""),
        ('""', ""),
    ],
)
def test_clean_prediction(raw, want):
    assert clean_prediction(raw, stop=("</s>",)) == want
