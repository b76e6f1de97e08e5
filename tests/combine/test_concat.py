from recoverlib.combine import ConcatConfig, Sample, combine, concat_predictions


def test_drops_duplicates_and_empties_keeps_first_seen_order():
    assert concat_predictions(["Make it short.", "", "make it  short.", "Add rhymes."]) == "Make it short. Add rhymes."


def test_separator_and_max_parts():
    assert concat_predictions(["a", "b", "c"], separator=" | ", max_parts=2) == "a | b"


def test_round_robin_across_adapters():
    samples = [Sample("x", 0, "x0"), Sample("x", 1, "x1"), Sample("y", 0, "y0"), Sample("y", 1, "y1")]
    assert combine(samples, ConcatConfig()) == "x0 y0 x1 y1"


def test_all_empty_gives_empty():
    assert combine([Sample(None, 0, ""), Sample(None, 1, " ")], ConcatConfig()) == ""


def test_unknown_strategy_is_a_one_line_error():
    import pytest

    from recoverlib.errors import RecoverlibError

    with pytest.raises(RecoverlibError, match="no combination strategy"):
        combine([], object())
