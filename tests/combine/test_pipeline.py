import json

import pytest

from recoverlib.combine import (
    BudgetConfig,
    ConcatConfig,
    FirstConfig,
    MbrConfig,
    MeanPromptConfig,
    PipelineConfig,
    SuffixConfig,
    combine,
    config_from_dict,
    config_to_dict,
    load_combination,
    save_combination,
)
from recoverlib.errors import RecoverlibError

from .conftest import PIRATE, SHORT, rows_of

FULL = PipelineConfig((MbrConfig(mean_prompt=MeanPromptConfig(text="Improve it.", mode="insert")),
                       SuffixConfig(text="zz", repeat=2), BudgetConfig()))


def test_steps_run_in_order():
    cfg = PipelineConfig([FirstConfig(), SuffixConfig(text="zz")])
    assert combine(rows_of(PIRATE, SHORT), cfg) == f"{PIRATE} zz"


def test_json_round_trip(tmp_path):
    assert config_from_dict(json.loads(json.dumps(config_to_dict(FULL)))) == FULL
    path = save_combination(FULL, tmp_path / "c.json", info={"score": 0.5})
    assert load_combination(path) == FULL
    assert load_combination(save_combination(ConcatConfig(), tmp_path / "d.json")) == ConcatConfig()


def test_relative_paths_are_read_beside_the_file(tmp_path):
    (tmp_path / "mean.txt").write_text("Improve it.")
    (tmp_path / "c.json").write_text(json.dumps({"strategy": "mean-prompt", "path": "mean.txt"}))
    assert load_combination(tmp_path / "c.json").resolved == "Improve it."


@pytest.mark.parametrize("doc,match", [
    ("{", "not JSON"),
    ('{"format": "other/9", "combination": {}}', "format"),
    ("[1]", "strategy"),
    ('{"strategy": "nope"}', "unknown combination strategy 'nope'"),
    ('{"strategy": "concat", "colour": 1}', "unknown field"),
    ('{"strategy": "concat", "max_parts": "2"}', "max_parts"),
    ('{"strategy": "concat", "max_parts": true}', "max_parts"),
    ('{"strategy": "concat", "max_parts": 0}', "max_parts must be"),
    ('{"strategy": "pipeline", "steps": []}', "at least one step"),
    ('{"strategy": "pipeline", "steps": [{"strategy": "pipeline", "steps": [{"strategy": "first"}]}]}',
     "pipeline"),
    ('{"strategy": "mbr", "mean_prompt": {"strategy": "suffix", "text": "x"}}', "mean_prompt"),
    ('{"strategy": "mean-prompt", "path": "missing.txt"}', "no such file"),
])
def test_bad_files_are_one_line_errors(tmp_path, doc, match):
    (tmp_path / "c.json").write_text(doc)
    with pytest.raises(RecoverlibError, match=match) as err:
        load_combination(tmp_path / "c.json")
    assert "\n" not in str(err.value)


def test_missing_file():
    with pytest.raises(RecoverlibError, match="no such combination file"):
        load_combination("/nonexistent/c.json")
