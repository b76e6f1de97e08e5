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
    assert (
        RecoveryTemplate().render(tokenizer, "a", "b", prime="Rewrite").endswith(RESPONSE_PREFIX + " Rewrite")
    )


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


@pytest.fixture(scope="module")
def base_tokenizer(tiny_model):
    """The tiny tokenizer without a chat template, as base checkpoints (Mixtral-8x7B-v0.1) are published."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = None
    return tok


def test_plain_prompt_for_a_tokenizer_without_chat_template(base_tokenizer, tokenizer, caplog):
    tpl = RecoveryTemplate().for_tokenizer(base_tokenizer, "base")
    assert tpl.kind == "plain"
    assert [r.getMessage() for r in caplog.records] == [
        "base has no chat template: using the plain recovery prompt (see --template)"
    ]
    prompt = tpl.render(base_tokenizer, "the cat", "THE CAT", prime="Rewrite")
    user = RecoveryTemplate().user_message("the cat", "THE CAT")
    assert prompt == f"<s>{user}\n\n{RESPONSE_PREFIX} Rewrite" and "[INST]" not in prompt
    ids = base_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids[0] == base_tokenizer.bos_token_id and ids.count(base_tokenizer.bos_token_id) == 1
    # a tokenizer with a template gets it under auto (silently), and plain when asked
    assert RecoveryTemplate().for_tokenizer(tokenizer).kind == "chat" and len(caplog.records) == 1
    assert not RecoveryTemplate(kind="plain").render(tokenizer, "a", "b").startswith("<s>[INST]")


def test_chat_template_asked_of_a_base_tokenizer_is_one_line(base_tokenizer):
    from recoverlib.errors import RecoverlibError

    with pytest.raises(RecoverlibError, match="base has no chat template .*--template plain"):
        RecoveryTemplate(kind="chat").for_tokenizer(base_tokenizer, "base")
    with pytest.raises(RecoverlibError, match="choose one of auto, chat, plain"):
        RecoveryTemplate(kind="instruct")


def test_adapters_are_served_with_the_template_they_were_trained_with():
    from recoverlib.errors import RecoverlibError
    from recoverlib.prompt import template_for_adapter

    auto = RecoveryTemplate()
    assert template_for_adapter(auto, "plain", "a").kind == "plain"
    assert template_for_adapter(auto, None, "a") is auto  # not trained by recoverlib: the run's template
    assert template_for_adapter(RecoveryTemplate(kind="chat"), "chat", "a").kind == "chat"
    with pytest.raises(
        RecoverlibError, match="adapter 'a' was trained with the plain recovery prompt, not chat"
    ):
        template_for_adapter(RecoveryTemplate(kind="chat"), "plain", "a")
