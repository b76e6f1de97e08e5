import pytest

from recoverlib.errors import RecoverlibError
from recoverlib.io import read_rows, read_truth, write_submission


def _csv(tmp_path, text, name="in.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_rows_with_ids_as_written(tmp_path):
    rows = read_rows(_csv(tmp_path, "id,original_text,rewritten_text\n007,a b,c d\n8,e,f\n"))
    assert [r.id for r in rows] == ["007", "8"]
    assert rows[0].original_text == "a b" and rows[0].problem is None


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(RecoverlibError, match="no such file") as err:
        read_rows(tmp_path / "nope.csv")
    assert "\n" not in str(err.value)


def test_misnamed_column_suggests_the_right_one(tmp_path):
    path = _csv(tmp_path, "id,original_text,rewriten_text\n1,a,b\n")
    with pytest.raises(RecoverlibError, match=r"'rewritten_text' \(found 'rewriten_text'\)"):
        read_rows(path)


def test_duplicate_ids_are_refused(tmp_path):
    with pytest.raises(RecoverlibError, match="duplicate id"):
        read_rows(_csv(tmp_path, "id,original_text,rewritten_text\n1,a,b\n1,c,d\n"))


def test_unreadable_csv(tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(RecoverlibError):
        read_rows(path)


def test_empty_and_nan_texts_are_kept_with_a_problem(tmp_path, caplog):
    rows = read_rows(_csv(tmp_path, 'id,original_text,rewritten_text\n1,,b\n2,"  ",b\n3,a,b\n'))
    assert [r.problem is not None for r in rows] == [True, True, False]
    assert "row id=1" in caplog.text


def test_truth_needs_prompts(tmp_path):
    assert read_truth(_csv(tmp_path, "id,rewrite_prompt\n1,Make it short\n")) == {"1": "Make it short"}
    with pytest.raises(RecoverlibError, match="empty rewrite_prompt"):
        read_truth(_csv(tmp_path, "id,rewrite_prompt\n1,\n", "t2.csv"))


def test_write_submission_roundtrip_and_atomic(tmp_path):
    out = write_submission(tmp_path / "sub" / "s.csv", ["1", "2"], ['say "hi", then, go', "x\ny"])
    assert read_truth(out) == {"1": 'say "hi", then, go', "2": "x\ny"}
    assert [p.name for p in out.parent.iterdir()] == ["s.csv"]  # no temp file left


def test_parquet_in_and_out_as_csv(sample_csv, tmp_path):
    import pandas as pd

    from recoverlib.io import read_rows, read_truth, write_submission

    frame = pd.read_csv(sample_csv, dtype=str, keep_default_na=False).head(5)
    frame.loc[2, "rewritten_text"] = ""
    csv, parquet = tmp_path / "in.csv", tmp_path / "in.parquet"
    frame.to_csv(csv, index=False)
    frame.to_parquet(parquet, index=False)
    assert read_rows(parquet) == read_rows(csv) and read_rows(parquet)[2].problem == "empty rewritten_text"
    out = write_submission(tmp_path / "sub.parquet", ["a", "b"], ["x", "y"])
    assert read_truth(out) == {"a": "x", "b": "y"}


def test_a_submission_is_replaced_only_when_whole(tmp_path):
    from recoverlib.io import SubmissionWriter, read_truth, write_submission

    path = write_submission(tmp_path / "sub.csv", ["a"], ["old"])
    with pytest.raises(RuntimeError), SubmissionWriter(path) as out:
        out.write(["a"], ["new"])
        raise RuntimeError("killed mid-write")
    assert read_truth(path) == {"a": "old"} and [p.name for p in tmp_path.iterdir()] == ["sub.csv"]
