import pytest

from recoverlib.combine import ConcatConfig, Sample, combine, concat_predictions
from recoverlib.errors import RecoverlibError

from .conftest import PIRATE, PIRATE2, SHORT, rows_of


def test_drops_duplicates_and_empties_keeps_first_seen_order():
    assert (
        concat_predictions(["Make it short.", "", "make it  short.", "Add rhymes."])
        == "Make it short. Add rhymes."
    )


def test_separator_and_max_parts():
    assert concat_predictions(["a", "b", "c"], separator=" | ", max_parts=2) == "a | b"


def test_round_robin_across_adapters():
    samples = [Sample("x", 0, "x0"), Sample("x", 1, "x1"), Sample("y", 0, "y0"), Sample("y", 1, "y1")]
    assert combine(samples, ConcatConfig()) == "x0 y0 x1 y1"


def test_all_empty_gives_empty():
    assert combine([Sample(None, 0, ""), Sample(None, 1, " ")], ConcatConfig()) == ""


def test_one_sample_and_no_samples():
    assert combine([Sample(None, 0, " only ")], ConcatConfig()) == "only"
    assert combine([], ConcatConfig(dedup_threshold=0.9)) == ""


def test_unknown_strategy_is_a_one_line_error():
    with pytest.raises(RecoverlibError, match="no combination strategy"):
        combine([], object())


def test_near_duplicates_removed_by_embedding(ctx):
    rows = rows_of(PIRATE, PIRATE2, SHORT, PIRATE)
    assert combine(rows, ConcatConfig(), ctx) == f"{PIRATE} {PIRATE2} {SHORT}"
    assert combine(rows, ConcatConfig(dedup_threshold=0.8), ctx) == f"{PIRATE} {SHORT}"
    assert combine(rows, ConcatConfig(dedup_threshold=1.0), ctx) == f"{PIRATE} {PIRATE2} {SHORT}"


@pytest.mark.parametrize("kwargs", [{"max_parts": 0}, {"dedup_threshold": 1.5}])
def test_bad_values(kwargs):
    with pytest.raises(RecoverlibError, match="concat"):
        ConcatConfig(**kwargs)
