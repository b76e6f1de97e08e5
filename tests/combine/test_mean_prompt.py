import pytest

from recoverlib.combine import ConcatConfig, MeanPromptConfig, PipelineConfig, combine
from recoverlib.errors import RecoverlibError

from .conftest import rows_of

MEAN = "Please improve this text using the writing style"


def test_append_prepend_insert_add_only_new_words():
    rows = rows_of("Rewrite this text as a poem.")
    assert combine(rows, MeanPromptConfig(text=MEAN)) == \
        "Rewrite this text as a poem. Please improve using the writing style"
    assert combine(rows, MeanPromptConfig(text=MEAN, mode="prepend", only_new_words=False)) == \
        f"{MEAN} Rewrite this text as a poem."
    assert combine(rows, MeanPromptConfig(text=MEAN, mode="insert", k=3, only_new_words=False)) == \
        "Please improve this Rewrite this text as a poem. text using the writing style"


def test_empty_row_gets_the_whole_mean_prompt():
    assert combine(rows_of("", " "), MeanPromptConfig(text=MEAN)) == MEAN
    assert combine([], MeanPromptConfig(text=MEAN, mode="insert")) == MEAN


def test_after_another_step_and_from_a_file(tmp_path):
    (tmp_path / "mean.txt").write_text(MEAN + "\n")
    cfg = PipelineConfig((ConcatConfig(max_parts=1), MeanPromptConfig(path=str(tmp_path / "mean.txt"))))
    assert combine(rows_of("Be brief.", "Be loud."), cfg) == f"Be brief. {MEAN}"


@pytest.mark.parametrize("kwargs,match", [
    ({}, "exactly one"), ({"text": "x", "mode": "middle"}, "mode"), ({"text": "x", "k": -1}, "k must"),
    ({"path": "/nope"}, "no such file"), ({"text": "  "}, "empty")])
def test_bad_configs(kwargs, match):
    with pytest.raises(RecoverlibError, match=match):
        MeanPromptConfig(**kwargs)
