import pytest

from recoverlib.combine import MbrConfig, MeanPromptConfig, combine, combine_rows
from recoverlib.combine.mbr import candidates
from recoverlib.errors import RecoverlibError

from .conftest import PIRATE, PIRATE2, POEM, SHORT, rows_of


def test_agreeing_samples_give_the_clean_answer(ctx):
    assert combine(rows_of(PIRATE, PIRATE, PIRATE2, PIRATE), MbrConfig(), ctx) == PIRATE


def test_split_samples_give_a_hedge(ctx):
    out = combine(rows_of(PIRATE, SHORT, PIRATE, SHORT), MbrConfig(), ctx)
    assert PIRATE in out and SHORT in out


def test_candidates_cover_singles_chains_all_and_mean(ctx):
    cfg = MbrConfig(max_parts=2, mean_prompt=MeanPromptConfig(text="Improve the text."))
    texts = [d.text for d in candidates(cfg, rows_of(PIRATE, SHORT, POEM), ctx)]
    assert texts[:3] == [PIRATE, SHORT, POEM]
    assert f"{PIRATE} {SHORT} {POEM}" in texts and f"{PIRATE} Improve the" in texts  # only new words
    assert sum(t.count(".") == 2 for t in texts) >= 1  # the chain's pair


def test_one_and_no_samples(ctx):
    assert combine(rows_of(POEM), MbrConfig(), ctx) == POEM
    assert combine([], MbrConfig(), ctx) == ""
    assert (
        combine(rows_of(""), MbrConfig(mean_prompt=MeanPromptConfig(text="Improve it.")), ctx)
        == "Improve it."
    )


def test_prior_weight_pulls_toward_the_mean_prompt(ctx):
    mean = MeanPromptConfig(text="Write it as a poem.")
    rows = rows_of(PIRATE, PIRATE, PIRATE)
    assert combine(rows, MbrConfig(mean_prompt=mean), ctx) == PIRATE
    assert "poem" in combine(rows, MbrConfig(mean_prompt=mean, prior_weight=1.0), ctx)


def test_rows_batch_gives_the_same_as_one_by_one(ctx):
    rows = {"1": rows_of(PIRATE, SHORT, PIRATE, SHORT), "2": rows_of(PIRATE, PIRATE), "3": []}
    got = combine_rows(rows, MbrConfig(), ctx, progress=False)
    assert got == {k: combine(v, MbrConfig(), ctx) for k, v in rows.items()}


@pytest.mark.parametrize("kwargs", [{"max_parts": 0}, {"prior_weight": 0.5}, {"prior_weight": -1},
                                    {"dedup_threshold": 2.0}, {"mean_prompt": "text"}])
def test_bad_values(kwargs):
    with pytest.raises(RecoverlibError, match="mbr"):
        MbrConfig(**kwargs)
