"""The synthetic task: deterministic, disjoint splits, families that ask for what they do."""

from __future__ import annotations

import hashlib
import random

import pytest

from recoverlib.cli import main
from recoverlib.errors import RecoverlibError
from recoverlib.io import read_rows, read_truth
from recoverlib.synthetic import FAMILIES, TaskConfig, generate, transforms, write_task
from recoverlib.synthetic.families import PERSONAS
from recoverlib.synthetic.texts import original_text

FILES = ("train.csv", "validation.csv", "test.csv", "test_truth.csv", "task.json")


def _digest(folder) -> dict[str, str]:
    return {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in FILES}


def test_same_seed_same_bytes_other_seed_other_rows(tmp_path):
    cfg = TaskConfig(rows=200, eval_rows=30, seed=3)
    a, b = write_task(tmp_path / "a", cfg), write_task(tmp_path / "b", cfg)
    assert _digest(a) == _digest(b)
    c = write_task(tmp_path / "c", TaskConfig(rows=200, eval_rows=30, seed=4))
    assert _digest(c)["train.csv"] != _digest(a)["train.csv"]


def test_splits_are_disjoint_and_kaggle_shaped(tmp_path):
    out = write_task(tmp_path, TaskConfig(rows=300, eval_rows=50))
    train, val = (
        read_rows(out / "train.csv", with_truth=True),
        read_rows(out / "validation.csv", with_truth=True),
    )
    test = read_rows(out / "test.csv")
    assert (len(train), len(val), len(test)) == (300, 50, 50)
    assert all(r.rewrite_prompt for r in train + val) and all(r.rewrite_prompt is None for r in test)
    assert "rewrite_prompt" not in (out / "test.csv").read_text().splitlines()[0]
    assert set(read_truth(out / "test_truth.csv")) == {r.id for r in test}
    texts = [{r.original_text for r in split} for split in (train, val, test)]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert len({r.id for r in train + val + test}) == 400


def test_families_registry_shape():
    groups = transforms()
    assert len(groups) >= 20 and len(FAMILIES) > len(groups)  # aliases exist
    assert all(len(f.wordings) >= 3 for f in FAMILIES.values())
    assert any(len(g) > 1 for g in groups.values())
    assert sum(f.draw is not None for f in FAMILIES.values()) >= 2


def test_every_family_is_deterministic_and_changes_the_text():
    rng = random.Random(0)
    for fam in FAMILIES.values():
        text = original_text(rng)
        params = fam.params(random.Random(1), text)
        out = fam.rewrite(text, params)
        assert out == fam.rewrite(text, dict(params)), fam.name
        assert out != text or fam.transform == "summary", fam.name
        assert all("{" not in w.format(**params) for w in fam.wordings), fam.name


def test_parameters_can_be_read_from_the_texts():
    rows = generate(TaskConfig(rows=400, eval_rows=1, seed=1))["train"]
    persona = [r for r in rows if r.family == "persona"]
    replace = [r for r in rows if r.family == "replace"]
    assert persona and replace
    for r in persona:
        name = next(p for p in PERSONAS if f"a {p}" in r.rewrite_prompt)
        assert name in r.rewritten_text
    for r in replace:
        words = r.rewrite_prompt.replace("'", " ").split()
        assert any(w in r.original_text and w not in r.rewritten_text for w in words)


@pytest.mark.parametrize(("level", "expect_alias"), [(0.0, False), (1.0, True)])
def test_ambiguity_level_controls_alias_families(level, expect_alias):
    rows = generate(TaskConfig(rows=500, eval_rows=1, ambiguity=level))["train"]
    assert any(FAMILIES[r.family].is_alias for r in rows) == expect_alias


def test_bad_config_is_one_line_error():
    with pytest.raises(RecoverlibError, match="ambiguity"):
        TaskConfig(ambiguity=2.0)


def test_make_task_cli(tmp_path, capsys):
    assert main(["make-task", str(tmp_path / "t"), "--rows", "50", "--eval-rows", "10", "--seed", "2"]) == 0
    assert all((tmp_path / "t" / f).is_file() for f in FILES)
    assert main(["make-task", str(tmp_path / "u"), "--ambiguity", "3"]) == 2
    assert "ambiguity" in capsys.readouterr().err
