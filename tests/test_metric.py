import numpy as np
import pytest

from recoverlib.metric import sharpened_cosine


def test_sharpened_cosine_keeps_sign_and_cubes():
    a = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    b = np.array([[2.0, 0.0], [-1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    got = sharpened_cosine(a, b)
    assert got == pytest.approx([1.0, -1.0, (1 / np.sqrt(2)) ** 3, 1.0])


def test_hedging_arithmetic_from_the_competition():
    # [0.5, 0.5] similarities average 0.125; [1, 0] average 0.5 (FACTS.md)
    assert np.mean(np.array([0.5, 0.5]) ** 3) == pytest.approx(0.125)


def test_scores_known_pairs(scorer):
    scores = scorer.row_scores(
        ["Rewrite this text as a poem.", "Rewrite this text as a poem.", "The quarterly tax form is due."],
        ["Rewrite this text as a poem.", "Turn the text into a poem.", "Rewrite this text as a poem."],
    )
    assert scores[0] == pytest.approx(1.0, abs=1e-4)
    assert 0.2 < scores[1] < 0.99
    assert scores[2] < scores[1]
    assert scorer.score(["a"], ["a"]) == pytest.approx(1.0, abs=1e-4)


def test_embedder_limit_is_read_from_the_model(scorer):
    assert scorer.max_seq_length == 256  # all-MiniLM-L6-v2's sentence_bert_config


def test_missing_embedder_is_one_line(tmp_path):
    from recoverlib.errors import RecoverlibError
    from recoverlib.metric import Scorer

    with pytest.raises(RecoverlibError, match="cannot load embedder"):
        Scorer(str(tmp_path / "nothing-here")).embed(["x"])
