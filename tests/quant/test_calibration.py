from pathlib import Path

import pytest

from recoverlib.errors import RecoverlibError
from recoverlib.quant.calibration import MAX_TEXTS, calibration_texts

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "data" / "sample.csv"


def test_kaggle_rows_become_recovery_prompts(base):
    texts = calibration_texts(SAMPLE, base)
    assert texts and all("Rewritten text:" in t for t in texts)


def test_text_column_builtin_and_sampling(base, tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("text\n" + "\n".join(f"line {i}" for i in range(MAX_TEXTS + 10)) + "\n")
    a, b = calibration_texts(csv, base, seed=1), calibration_texts(csv, base, seed=1)
    assert a == b and len(a) == MAX_TEXTS
    assert calibration_texts(None, base)  # built-in examples


def test_bad_calibration(base, tmp_path):
    with pytest.raises(RecoverlibError, match="no such file"):
        calibration_texts(tmp_path / "missing.csv", base)
    with pytest.raises(RecoverlibError, match="no non-empty texts"):
        calibration_texts(["", "  "], base)
