"""``embedding-search`` with its predictions pre-filled in the context's head cache (what a head would have
predicted): the search logic is checked against the ``embedding`` strategy it starts from, without a model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from recoverlib.combine import (
    CombineContext,
    EmbeddingConfig,
    EmbeddingSearchConfig,
    combine_rows,
    strategies,
)
from recoverlib.combine.configio import config_from_dict, config_to_dict, load_combination, save_combination
from recoverlib.combine.embedding_search import row_objective, search_row
from recoverlib.combine.mbr import candidates, expected_scores
from recoverlib.errors import RecoverlibError
from recoverlib.heads.model import HeadInfo
from tests.combine.conftest import PIRATE, PIRATE2, POEM, SHORT, rows_of

ROWS = {
    "r1": rows_of(PIRATE, PIRATE2, PIRATE, SHORT, PIRATE2, POEM),
    "r2": rows_of(PIRATE, POEM, PIRATE2, PIRATE, SHORT, PIRATE2),
}
# what the (stand-in) head predicts per row: texts, embedded in the test's context
PREDICTED = {"r1": "Make the text shorter and more formal please.",
             "r2": "Turn this text into a poem about food."}


def with_predictions(scorer, predicted: dict[str, str], path: str = "head") -> CombineContext:
    """A context whose embedding head at ``path`` has already predicted ``predicted``'s texts' embeddings."""
    ctx = CombineContext(scorer=scorer, pairs={r: (f"original {r}", f"rewritten {r}") for r in predicted})
    vectors = ctx.embed(list(predicted.values()))
    ctx.heads[("embeddings", path)] = dict(zip(predicted, vectors, strict=True))
    return ctx


@pytest.fixture
def sctx(scorer):
    return with_predictions(scorer, PREDICTED)


def cos3(ctx, a: str, b: str) -> float:
    return float(ctx.sharp(ctx.embed([a]), ctx.embed([b]))[0, 0])


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_the_objective_ranks_mbrs_candidates_as_embedding_does(sctx, weight):
    config = EmbeddingSearchConfig(path="head", weight=weight)
    for row, samples in ROWS.items():
        target = sctx.heads[("embeddings", "head")][row]
        drafts = candidates(config.mbr, samples, sctx)
        texts = [d.text for d in drafts]
        near = sctx.sharp(sctx.embed(texts), target[None, :])[:, 0]
        mixed = (1 - weight) * expected_scores(config.mbr, drafts, samples, sctx) + weight * near
        got = row_objective(config, samples, target, sctx)(texts)
        np.testing.assert_allclose(got, mixed, atol=1e-6)


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_it_starts_from_embeddings_choice_and_never_scores_below_it(sctx, weight):
    config = EmbeddingSearchConfig(path="head", weight=weight, steps=2)
    picked = combine_rows(ROWS, EmbeddingConfig(path="head", weight=weight), sctx, progress=False)
    got = combine_rows(ROWS, config, sctx, progress=False)
    for row, samples in ROWS.items():
        assert got[row].startswith(picked[row])
        score = row_objective(config, samples, sctx.heads[("embeddings", "head")][row], sctx)
        start, end = score([picked[row], got[row]])
        assert end >= start - 1e-6
        assert len(got[row].split()) - len(picked[row].split()) <= config.steps


def test_when_no_word_helps_the_result_is_embeddings_choice(scorer):
    # the prediction is a sample's own embedding: that sample scores cos^3 = 1 and no appended word beats it
    ctx = with_predictions(scorer, {"r1": SHORT, "r2": POEM})
    for weight in (1.0, 0.9):
        picked = combine_rows(ROWS, EmbeddingConfig(path="head", weight=weight), ctx, progress=False)
        assert picked == {"r1": SHORT, "r2": POEM}
        got = combine_rows(ROWS, EmbeddingSearchConfig(path="head", weight=weight), ctx, progress=False)
        assert got == picked


def test_with_weight_one_it_moves_toward_a_predicted_word_sequence(scorer):
    goal = "make the text shorter and more formal poem"  # words of the row's samples, "poem" added
    ctx = with_predictions(scorer, {"r1": goal})
    config = EmbeddingSearchConfig(path="head", weight=1.0, steps=3, max_parts=1)  # singles: SHORT starts
    picked = combine_rows({"r1": ROWS["r1"]}, EmbeddingConfig(path="head", max_parts=1), ctx,
                          progress=False)["r1"]
    draft = search_row(config, ROWS["r1"], ctx.heads[("embeddings", "head")]["r1"], ctx.at_row("r1"))
    assert picked == SHORT
    assert cos3(ctx, draft.text, goal) > cos3(ctx, picked, goal) + 0.01
    assert "poem" in draft.parts[-1].text.split()
    assert draft.parts[-1].kind == "suffix" and draft.predictions() == [SHORT]


def test_config_is_registered_and_round_trips_through_json(tmp_path):
    config = EmbeddingSearchConfig(path=str(tmp_path / "head"), weight=0.5, steps=4, beam=2, max_parts=2)
    assert strategies()["embedding-search"].config_type is EmbeddingSearchConfig
    assert config_to_dict(config)["strategy"] == "embedding-search"
    assert config_from_dict(config_to_dict(config)) == config
    assert load_combination(save_combination(config, tmp_path / "c.json")) == config


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"path": ""}, "path .* is required"),
        ({"path": "h", "weight": 1.5}, "weight must be in \\[0, 1\\]"),
        ({"path": "h", "steps": 0}, "steps must be >= 1"),
        ({"path": "h", "beam": 0}, "beam must be >= 1"),
        ({"path": "h", "max_parts": 0}, "max_parts must be >= 1"),
        ({"path": "h", "vocab": "tokens"}, "vocab must be one of row"),
    ],
)
def test_bad_values_are_one_line_errors(bad, message):
    with pytest.raises(RecoverlibError, match=f"^embedding-search: {message}") as err:
        EmbeddingSearchConfig(**bad)
    assert "\n" not in str(err.value)


def test_a_row_without_its_pair_is_refused(scorer):
    ctx = CombineContext(scorer=scorer)
    # a loaded head that must never be asked: the pair is looked up before it predicts
    info = HeadInfo("embedding", 384, "minilm", "-", "plain", 64)
    ctx.heads[("model", "head")] = SimpleNamespace(info=info, predict=lambda pairs: pytest.fail("predicted"))
    with pytest.raises(RecoverlibError, match="no \\(original, rewritten\\) pair"):
        combine_rows({"r9": ROWS["r1"]}, EmbeddingSearchConfig(path="head"), ctx, progress=False)


@pytest.mark.parametrize("mode", ["drop", "rerank"])  # weight leaves a sample's own copy out: see test_heads
def test_an_embedding_head_judges_for_the_verifier_modes(scorer, mode):
    # the prediction is one sample's text: the judge's score of a text is its metric score against it
    ctx = with_predictions(scorer, {"r1": POEM, "r2": SHORT})
    ctx.heads[("info", "head")] = HeadInfo("embedding", 384, "minilm", "base", "chat", 160)
    from recoverlib.combine import VerifierConfig
    from recoverlib.heads.cache import judged_scores

    texts = [PIRATE, POEM, SHORT]
    got = judged_scores(ctx, "head", "r1", texts)
    assert np.allclose(got, ctx.sharp(ctx.embed(texts), ctx.embed([POEM]))[:, 0], atol=1e-6)
    config = VerifierConfig(path="head", mode=mode, keep=0.25, temperature=0.01)
    picked = combine_rows(ROWS, config, ctx, progress=False)
    # gated or reranked toward the prediction: each row's pick is the sample the head predicts, which the
    # samples alone would not choose (PIRATE and PIRATE2 are the majority in both rows)
    assert picked == {"r1": POEM, "r2": SHORT}
    plain = combine_rows(ROWS, EmbeddingConfig(path="head", weight=0.0), ctx, progress=False)
    assert plain["r1"] != POEM and plain["r2"] != SHORT
