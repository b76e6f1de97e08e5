"""The verifier and embedding strategies, with stand-in heads that know the truth (an oracle): the strategy
logic is checked exactly, without training (tests/heads trains the real ones)."""

from __future__ import annotations

import numpy as np
import pytest

from recoverlib.combine import CombineContext, EmbeddingConfig, MbrConfig, VerifierConfig, combine_rows
from recoverlib.combine.configio import config_from_dict, config_to_dict
from recoverlib.combine.mbr import candidates
from recoverlib.combine.tune import default_candidates
from recoverlib.errors import RecoverlibError
from recoverlib.heads.model import HeadInfo
from tests.combine.conftest import PIRATE, PIRATE2, POEM, SHORT, rows_of

TRUTH = {
    "r1": "Make the text shorter and more formal please.",
    "r2": "Turn this text into a poem about food.",
}
ROWS = {
    # two adapters agree on the pirate (mbr's pick), one sample is near the truth
    "r1": rows_of(PIRATE, PIRATE2, PIRATE, SHORT, PIRATE2, POEM),
    "r2": rows_of(PIRATE, POEM, PIRATE2, PIRATE, SHORT, PIRATE2),
}


class Oracle:
    """A head that answers from the truth: a verifier's true metric score, or the truth's embedding."""

    def __init__(self, ctx, kind: str, embedder: str):
        self.ctx, self.calls = ctx, 0
        self.info = HeadInfo(
            kind=kind,
            dim=1 if kind == "verifier" else 384,
            embedder=embedder,
            base="-",
            template="plain",
            max_length=64,
        )
        self.truth_of = {pair: TRUTH[r] for r, pair in ctx.pairs.items()}

    def predict(self, pairs, candidates=None):
        self.calls += 1
        truths = self.ctx.embed([self.truth_of[p] for p in pairs])
        if candidates is None:
            return truths
        return self.ctx.sharp(self.ctx.embed(list(candidates)), truths).diagonal().copy()


@pytest.fixture
def hctx(scorer):
    ctx = CombineContext(scorer=scorer, pairs={r: (f"original {r}", f"rewritten {r}") for r in ROWS})
    for kind in ("verifier", "embedding"):
        ctx.heads[("model", kind)] = Oracle(ctx, kind, "minilm")
    return ctx


def true_score(ctx, row: str, text: str) -> float:
    return float(ctx.sharp(ctx.embed([text]), ctx.embed([TRUTH[row]]))[0, 0])


def best_candidate(ctx, row: str) -> float:
    return max(true_score(ctx, row, d.text) for d in candidates(MbrConfig(), ROWS[row], ctx))


@pytest.mark.parametrize(
    "config",
    [VerifierConfig(path="verifier"), EmbeddingConfig(path="embedding")],
    ids=["verifier", "embedding"],
)
def test_an_oracle_head_picks_the_best_candidate_where_mbr_does_not(hctx, config):
    got = combine_rows(ROWS, config, hctx, progress=False)
    mbr = combine_rows(ROWS, MbrConfig(), hctx, progress=False)
    for row in ROWS:
        # the verifier ranks by the true score; the embedding head by cos^3 to the truth: the same order
        assert true_score(hctx, row, got[row]) == pytest.approx(best_candidate(hctx, row), abs=1e-6)
        assert true_score(hctx, row, got[row]) > true_score(hctx, row, mbr[row]) + 0.05


def test_one_batched_pass_scores_every_row(hctx):
    combine_rows(ROWS, VerifierConfig(path="verifier"), hctx, progress=False)
    assert hctx.heads[("model", "verifier")].calls == 1  # prepare: every (row, candidate) in one call


def test_drop_keeps_the_verifiers_best_half_then_runs_mbr(hctx):
    got = combine_rows(
        ROWS, VerifierConfig(path="verifier", mode="drop", keep=0.25, max_parts=1), hctx, progress=False
    )
    # a quarter of four distinct texts: only the truest one survives
    assert got == {"r1": SHORT, "r2": POEM}


def test_weight_favours_samples_the_verifier_believes(hctx):
    # the truest text is sampled twice, the pirate four times: mbr picks the pirate
    rows = {"r1": rows_of(PIRATE, SHORT, PIRATE, SHORT, PIRATE2, PIRATE)}
    weighted = lambda t: VerifierConfig(path="verifier", mode="weight", temperature=t, max_parts=1)  # noqa: E731
    sharp = combine_rows(rows, weighted(0.01), hctx, progress=False)
    flat = combine_rows(rows, weighted(100.0), hctx, progress=False)
    mbr = combine_rows(rows, MbrConfig(max_parts=1), hctx, progress=False)
    assert flat == mbr and mbr["r1"] in (PIRATE, PIRATE2)  # equal weights: mbr itself
    assert sharp == {"r1": SHORT}  # the verifier's belief outweighs the pirate's majority


def test_zero_weight_is_mbr(hctx):
    assert combine_rows(
        ROWS, VerifierConfig(path="verifier", weight=0.0), hctx, progress=False
    ) == combine_rows(ROWS, MbrConfig(), hctx, progress=False)
    assert combine_rows(
        ROWS, EmbeddingConfig(path="embedding", weight=0.0), hctx, progress=False
    ) == combine_rows(ROWS, MbrConfig(), hctx, progress=False)


def test_configs_round_trip_and_bad_values_are_one_line():
    for config in (VerifierConfig(path="v", mode="drop", keep=0.3), EmbeddingConfig(path="e", weight=0.5)):
        assert config_from_dict(config_to_dict(config)) == config
    for bad in (
        {"path": ""},
        {"path": "v", "mode": "vote"},
        {"path": "v", "weight": 2.0},
        {"path": "v", "keep": 0.0},
    ):
        with pytest.raises(RecoverlibError, match="verifier"):
            VerifierConfig(**bad)
    with pytest.raises(RecoverlibError, match="embedding"):
        EmbeddingConfig(path="e", weight=-0.1)


def test_a_row_without_its_pair_or_a_head_of_another_embedder_is_refused(hctx, scorer):
    with pytest.raises(RecoverlibError, match="no \\(original, rewritten\\) pair"):
        combine_rows({"r9": ROWS["r1"]}, VerifierConfig(path="verifier"), hctx, progress=False)
    other = CombineContext(scorer=scorer, pairs=hctx.pairs)
    other.heads[("model", "verifier")] = Oracle(other, "verifier", "sentence-t5-base")
    with pytest.raises(RecoverlibError, match="trained for embedder"):
        combine_rows(ROWS, VerifierConfig(path="verifier"), other, progress=False)
    other.heads[("model", "embedding")] = Oracle(other, "verifier", "minilm")
    with pytest.raises(RecoverlibError, match="is a verifier head"):
        combine_rows(ROWS, EmbeddingConfig(path="embedding"), other, progress=False)


def test_tune_grid_adds_the_head_strategies_only_when_given():
    names = lambda cands: [c.name for c in cands]  # noqa: E731
    plain = names(default_candidates())
    both = names(default_candidates(verifier="v", embedding="e"))
    assert not any(n.startswith(("verifier", "embedding")) for n in plain)
    assert both[: len(plain)] == plain
    assert set(both) - set(plain) == {
        "verifier-rerank",
        "verifier-mix",
        "verifier-drop",
        "verifier-weight",
        "embedding-rerank",
        "embedding-mix",
        "embedding-drop",
        "embedding-weight",
        "embedding-search-mix",
    }


def test_embedding_prediction_is_moved_into_the_contexts_geometry(scorer):
    from recoverlib.heads.cache import predicted_embeddings
    from recoverlib.metric import Scorer

    t5 = Scorer("minilm@t5like", progress=False)
    t5._model = scorer.model  # same embedder, no second load
    ctx = CombineContext(scorer=t5, pairs={"r1": ("o", "r")})
    raw = CombineContext(scorer=scorer, pairs=ctx.pairs)
    ctx.heads[("model", "e")] = Oracle(raw, "embedding", "minilm")
    got = predicted_embeddings(ctx, "e", ["r1"])["r1"]
    want = ctx.embed([TRUTH["r1"]])[0]
    assert np.dot(got, want) == pytest.approx(1.0, abs=1e-5)
