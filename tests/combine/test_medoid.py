import numpy as np

from recoverlib.combine import MedoidConfig, combine
from recoverlib.combine.medoid import medoid_index

from .conftest import PIRATE, PIRATE2, POEM, SHORT, rows_of


def test_medoid_index_on_a_hand_matrix():
    sharp = np.array([[1, 0.1, 0.1], [0.1, 1, 0.8], [0.1, 0.8, 1]])
    assert medoid_index(sharp) == 1  # tie between 1 and 2 goes to the earliest


def test_picks_the_sample_most_like_the_others(ctx):
    assert combine(rows_of(SHORT, PIRATE, POEM, PIRATE2, PIRATE), MedoidConfig(), ctx) in (PIRATE, PIRATE2)


def test_small_rows(ctx):
    assert combine([], MedoidConfig(), ctx) == ""
    assert combine(rows_of("", SHORT), MedoidConfig(), ctx) == SHORT
    assert combine(rows_of(POEM, SHORT), MedoidConfig(), ctx) == POEM
