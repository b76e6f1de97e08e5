import pytest

from recoverlib.combine import (
    BudgetConfig,
    ConcatConfig,
    Draft,
    MeanPromptConfig,
    Part,
    PipelineConfig,
    SuffixConfig,
    combine,
)
from recoverlib.combine.budget import fit_budget
from recoverlib.errors import RecoverlibError

from .conftest import PIRATE, PIRATE2, POEM, SHORT, rows_of

LONG = " ".join(f"word{i} and more words" for i in range(200))  # far past MiniLM's 256 tokens


def n_tokens(scorer, text):
    return len(scorer.tokenizer(text, truncation=False)["input_ids"])


def test_limit_read_from_the_embedder(ctx, scorer):
    assert ctx.max_tokens == scorer.max_seq_length == 256


@pytest.mark.parametrize("texts", [(LONG,), (LONG, LONG + " x"), (PIRATE, LONG, SHORT), (PIRATE,) * 40,
                                   tuple(f"{POEM} number {i}." for i in range(40))])
def test_never_exceeds_the_embedder_limit(ctx, scorer, texts):
    cfg = PipelineConfig((ConcatConfig(), MeanPromptConfig(text="Please improve the text."),
                          SuffixConfig(text="lucrarea", repeat=30), BudgetConfig()))
    out = combine(rows_of(*texts), cfg, ctx)
    assert out and n_tokens(scorer, out) <= 256


def test_short_drafts_untouched_and_empty_stays_empty(ctx):
    assert combine(rows_of(PIRATE, SHORT), BudgetConfig(), ctx) == f"{PIRATE} {SHORT}"
    assert combine([], BudgetConfig(), ctx) == ""


def test_drops_the_outlier_prediction_first_and_keeps_fixed_parts(ctx, scorer):
    draft = Draft(
        (Part(PIRATE), Part(PIRATE2), Part(POEM), Part("Please improve.", "mean"), Part("zz", "suffix"))
    )
    limit = n_tokens(scorer, draft.text) - 2
    out = fit_budget(draft, rows_of(PIRATE, PIRATE2, PIRATE), ctx, limit)
    assert [p.text for p in out.parts] == [PIRATE, PIRATE2, "Please improve.", "zz"]


def test_then_suffix_then_mean_then_cut(ctx, scorer):
    draft = Draft((Part(PIRATE), Part("Please improve.", "mean"), Part("zz yy xx", "suffix")))
    limit = n_tokens(scorer, f"{PIRATE} Please improve. zz")
    assert fit_budget(draft, rows_of(PIRATE), ctx, limit).text == f"{PIRATE} Please improve. zz"
    assert fit_budget(draft, rows_of(PIRATE), ctx, n_tokens(scorer, PIRATE)).text == PIRATE
    assert fit_budget(draft, rows_of(PIRATE), ctx, n_tokens(scorer, "Rewrite this text as")).text == \
        "Rewrite this text as"


def test_max_tokens_below_the_limit(ctx, scorer):
    out = combine(rows_of(PIRATE, SHORT, POEM), BudgetConfig(max_tokens=20), ctx)
    assert n_tokens(scorer, out) <= 20 and out


def test_bad_value():
    with pytest.raises(RecoverlibError, match="budget"):
        BudgetConfig(max_tokens=0)
