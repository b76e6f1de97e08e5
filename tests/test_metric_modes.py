"""Embedder modes: the competition's scorer (128 tokens, literal </s> as text) and the t5-like geometry."""

import numpy as np
import pytest

from recoverlib.errors import RecoverlibError
from recoverlib.metric import ANISOTROPY, Scorer, move_toward, split_embedder


def test_modes_parse_and_unknown_ones_are_one_line():
    assert split_embedder("minilm@t5like@competition") == ("minilm", ("t5like", "competition"))
    with pytest.raises(RecoverlibError, match="unknown mode"):
        Scorer("minilm@nope")


def test_moving_toward_a_direction_raises_every_cosine_and_keeps_unit_length():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(20, 16)).astype(np.float32)
    direction = np.eye(16, dtype=np.float32)[0]
    moved = move_toward(emb, direction, ANISOTROPY)
    assert np.allclose(np.linalg.norm(moved, axis=1), 1, atol=1e-5)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    before, after = unit @ unit.T, moved @ moved.T
    off = ~np.eye(20, dtype=bool)
    assert (after[off] > before[off]).mean() > 0.9 and after[off].mean() > before[off].mean() + 0.3


def test_t5like_scorer_lifts_unrelated_texts_and_keeps_identity(scorer):
    t5like = Scorer("minilm@t5like", progress=False)
    pair = (["Rewrite this text as a poem.", "Rewrite this text as a poem."],
            ["Rewrite this text as a poem.", "The quarterly tax form is due on Monday."])
    plain, moved = scorer.row_scores(*pair), t5like.row_scores(*pair)
    assert moved[0] == pytest.approx(1.0, abs=1e-4)
    assert moved[1] > plain[1] + 0.2


def test_competition_mode_reads_128_tokens_and_a_literal_eos_as_text():
    plain, comp = Scorer("minilm", progress=False), Scorer("minilm@competition", progress=False)
    assert plain.max_seq_length == 256 and comp.max_seq_length == 128
    long_a, long_b = "word " * 150 + "alpha", "word " * 150 + "omega"
    # past 128 tokens the ending is cut off: the two texts embed alike only in competition mode
    assert comp.row_scores([long_a], [long_b])[0] > plain.row_scores([long_a], [long_b])[0]
    # a special token's text ("</s>" for sentence-t5, "[SEP]" for MiniLM) is plain text in competition mode
    sep = plain.tokenizer.sep_token_id
    assert sep in plain.tokenizer("a [SEP] b", add_special_tokens=False)["input_ids"]
    assert sep not in comp.tokenizer("a [SEP] b", add_special_tokens=False)["input_ids"]
