from recoverlib.combine import FirstConfig, Sample, combine

from .conftest import PIRATE, SHORT, rows_of


def test_first_non_empty_in_round_robin_order():
    assert combine(rows_of("", SHORT, PIRATE), FirstConfig()) == SHORT
    assert combine([Sample("b", 1, "late"), Sample("a", 0, "early")], FirstConfig()) == "early"


def test_empty_and_none():
    assert combine([], FirstConfig()) == ""
    assert combine(rows_of(" ", ""), FirstConfig()) == ""
