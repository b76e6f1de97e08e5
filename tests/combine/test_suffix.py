import pytest

from recoverlib.combine import MedoidConfig, PipelineConfig, SuffixConfig, combine
from recoverlib.errors import RecoverlibError

from .conftest import PIRATE, SHORT, rows_of


def test_appends_repeated_suffix():
    assert combine(rows_of(PIRATE, SHORT), SuffixConfig(text="lucrarea", repeat=2)) == \
        f"{PIRATE} {SHORT} lucrarea lucrarea"


def test_empty_row_stays_empty():
    assert combine(rows_of(""), SuffixConfig(text="lucrarea")) == ""


def test_after_a_selector_from_a_file(tmp_path, ctx):
    (tmp_path / "s.txt").write_text("zz yy\n")
    cfg = PipelineConfig((MedoidConfig(), SuffixConfig(path=str(tmp_path / "s.txt"))))
    assert combine(rows_of(PIRATE), cfg, ctx) == f"{PIRATE} zz yy"


@pytest.mark.parametrize("kwargs", [{}, {"text": "a", "path": "b"}, {"text": "a", "repeat": 0},
                                    {"path": "/no"}])
def test_bad_configs(kwargs):
    with pytest.raises(RecoverlibError, match="suffix"):
        SuffixConfig(**kwargs)
