"""The pipeline over an engine: fallbacks, samples file, resume, primes (HF engine: quick to start)."""

import json

import pytest

from recoverlib.engines import EngineConfig, SamplingConfig, make_engine
from recoverlib.errors import RecoverlibError
from recoverlib.io import Row, read_rows, read_samples
from recoverlib.pipeline import PredictConfig, predict_rows


@pytest.fixture(scope="module")
def engine(tiny_model, tiny_adapters):
    with make_engine(
        "hf", tiny_model, {k: tiny_adapters[k] for k in ("tiny-a", "tiny-b")}, EngineConfig()
    ) as eng:
        yield eng


CFG = PredictConfig(SamplingConfig(samples=2, max_new_tokens=8), chunk_rows=2)


def test_bad_rows_get_fallback_and_the_rest_is_served(engine):
    rows = [
        Row("1", "a text", "A TEXT"),
        Row("2", "", "x", problem="empty original_text"),
        Row("3", "b", "B"),
    ]
    preds = predict_rows(engine, rows, CFG)
    assert [p.id for p in preds] == ["1", "2", "3"]
    assert preds[1].prompt == CFG.fallback_prompt and preds[1].fallback
    assert preds[0].fallback is None and len(preds[0].samples) == 4  # 2 adapters x 2 samples


def test_all_empty_samples_get_fallback(engine, monkeypatch):
    monkeypatch.setattr(
        engine, "generate", lambda prompts, s, adapters, keys=None: {a: [["", '""']] for a in adapters}
    )
    (pred,) = predict_rows(engine, [Row("1", "a", "b")], CFG)
    assert pred.prompt == CFG.fallback_prompt and pred.fallback == "empty samples"


def _failing_on(engine, monkeypatch, marker: str, calls: list):
    """engine.generate raising for any batch holding a prompt with ``marker`` (a row the engine cannot
    serve)."""
    real = engine.generate

    def generate(prompts, s, adapters, keys=None):
        calls.append(list(keys))
        if any(marker in p for ps in prompts.values() for p in ps):
            raise RuntimeError("a kernel failed on this row")
        return real(prompts, s, adapters, keys)

    monkeypatch.setattr(engine, "generate", generate)


def test_a_row_whose_generation_fails_costs_that_row_only(engine, tmp_path, monkeypatch, caplog):
    rows = [Row(str(i), f"text {i}", "POISON" if i == 2 else f"TEXT {i}") for i in range(5)]
    clean = predict_rows(engine, rows, CFG)
    calls = []
    _failing_on(engine, monkeypatch, "POISON", calls)
    path = tmp_path / "s.jsonl"
    preds = predict_rows(engine, rows, CFG, samples_file=path)
    assert [p.id for p in preds] == [r.id for r in rows]
    assert preds[2].prompt == CFG.fallback_prompt and preds[2].fallback == "generation failed"
    # Rows of the other chunks: what a clean run gives; the failed chunk's good row was served (alone).
    assert [p.prompt for i, p in enumerate(preds) if i not in (2, 3)] == [
        p.prompt for i, p in enumerate(clean) if i not in (2, 3)
    ]
    assert preds[3].fallback is None and len(preds[3].samples) == 4
    assert list(read_samples(path)) == ["0", "1", "3", "4"]  # the failed row is not saved: resume retries it
    assert "row id=2: generation failed (RuntimeError: a kernel failed on this row)" in caplog.text
    assert [2, 3] in calls and [2] in calls and [3] in calls  # the chunk, then each of its rows alone
    monkeypatch.undo()
    resumed = predict_rows(engine, rows, CFG, samples_file=path, resume=True)
    assert resumed[2].fallback is None and sorted(read_samples(path)) == [r.id for r in rows]


def test_an_engine_that_fails_on_every_row_stops_the_run(engine, tmp_path, monkeypatch):
    rows = [Row(str(i), f"text {i}", f"POISON {i}" if i >= 2 else f"TEXT {i}") for i in range(4)]
    _failing_on(engine, monkeypatch, "POISON", [])
    path = tmp_path / "s.jsonl"
    with pytest.raises(RuntimeError, match="kernel failed"):
        predict_rows(engine, rows, CFG, samples_file=path)
    assert list(read_samples(path)) == ["0", "1"]  # the chunk finished before the failure is kept


def test_a_settings_error_is_not_a_row_failure(engine, monkeypatch):
    def generate(prompts, s, adapters, keys=None):
        raise RecoverlibError("max_new_tokens 9999 leaves no room for the prompt")

    monkeypatch.setattr(engine, "generate", generate)
    # one servable row: still raised, not a fallback
    with pytest.raises(RecoverlibError, match="leaves no room"):
        predict_rows(engine, [Row("1", "a text", "A TEXT")], CFG)


def test_samples_file_lines_in_input_order_and_resume(engine, sample_csv, tmp_path, monkeypatch):
    rows = read_rows(sample_csv)[:5]
    path = tmp_path / "s.jsonl"
    first = predict_rows(engine, rows, CFG, samples_file=path)
    header, *lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert header["settings"]["seed"] == CFG.sampling.seed  # what --resume checks
    assert [x["id"] for x in lines] == [r.id for r in rows]
    assert {"adapter", "index", "text"} <= set(lines[0]["samples"][0])
    # Simulate a run that stopped after two chunks: resume samples only the missing row.
    path.write_text("\n".join(path.read_text().splitlines()[:5]) + "\n")
    calls = []
    real = engine.generate
    monkeypatch.setattr(
        engine, "generate", lambda p, s, a, keys: calls.append(len(p[a[0]])) or real(p, s, a, keys)
    )
    resumed = predict_rows(engine, rows, CFG, samples_file=path, resume=True)
    assert calls == [1]
    assert [p.prompt for p in resumed] == [p.prompt for p in first]
    assert list(read_samples(path)) == [r.id for r in rows]


SAMPLED = PredictConfig(SamplingConfig(samples=2, max_new_tokens=6, temperature=1.0, seed=3), chunk_rows=3)


def test_resume_after_a_torn_line_writes_the_same_bytes(engine, sample_csv, tmp_path, caplog):
    """A crash mid-chunk: the torn last line is dropped (warned), its chunk sampled again, nothing
    duplicated."""
    rows = read_rows(sample_csv)[:8]
    whole = tmp_path / "whole.jsonl"
    first = predict_rows(engine, rows, SAMPLED, samples_file=whole)
    data = whole.read_bytes()
    lines = data.splitlines(keepends=True)
    for keep in (1, 4):  # inside the first chunk, and one row into the second
        cut = tmp_path / f"cut{keep}.jsonl"
        torn = lines[keep][: len(lines[keep]) // 2]
        cut.write_bytes(b"".join(lines[:keep]) + torn)
        with caplog.at_level("WARNING", logger="recoverlib"):
            resumed = predict_rows(engine, rows, SAMPLED, samples_file=cut, resume=True)
        assert "cut short by a crash" in caplog.text
        assert cut.read_bytes() == data
        assert [p.prompt for p in resumed] == [p.prompt for p in first]


def test_a_whole_last_line_without_its_newline_is_kept(engine, sample_csv, tmp_path):
    rows = read_rows(sample_csv)[:4]
    path = tmp_path / "s.jsonl"
    predict_rows(engine, rows, SAMPLED, samples_file=path)
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    predict_rows(engine, rows, SAMPLED, samples_file=path, resume=True)
    assert path.read_bytes() == data


def test_finished_samples_are_not_replaced_without_resume(engine, tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"id": "1", "samples": []}) + "\n")
    with pytest.raises(RecoverlibError, match="pass --resume"):
        predict_rows(engine, [Row("1", "a", "b")], CFG, samples_file=path)
    assert json.loads(path.read_text())["id"] == "1"


def test_resume_refuses_a_samples_file_of_other_rows(engine, tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"id": "zzz", "samples": []}) + "\n")
    with pytest.raises(RecoverlibError, match="not in the input"):
        predict_rows(engine, [Row("1", "a", "b")], CFG, samples_file=path, resume=True)


def test_malformed_samples_file(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"id": 1}\n')
    with pytest.raises(RecoverlibError, match=r"s.jsonl:1: not a samples line"):
        read_samples(path)


def test_primed_adapter_predictions_keep_the_prime(engine, monkeypatch):
    from dataclasses import replace

    monkeypatch.setitem(engine.adapters, "tiny-a", replace(engine.adapters["tiny-a"], prime="Rewrite"))
    (pred,) = predict_rows(engine, [Row("1", "some text", "SOME TEXT")], CFG)
    assert all(s.text.startswith("Rewrite") for s in pred.samples if s.adapter == "tiny-a")


def test_long_rows_are_truncated_with_a_warning(engine, caplog):
    (pred,) = predict_rows(engine, [Row("long", "word " * 2000, "WORD " * 2000)], CFG)
    assert "row id=long: texts truncated" in caplog.text
    assert pred.fallback is None or pred.fallback == "empty samples"


def test_chunks_default_to_the_engine_choice(engine, monkeypatch):
    calls = []
    real = engine.generate
    monkeypatch.setattr(
        engine, "generate", lambda p, s, a, keys: calls.append(len(p[a[0]])) or real(p, s, a, keys)
    )
    monkeypatch.setattr(type(engine), "chunk_rows", 3)
    rows = [Row(str(i), f"text {i}", f"TEXT {i}") for i in range(7)]
    predict_rows(engine, rows, PredictConfig(SamplingConfig(samples=1, max_new_tokens=4)))
    assert calls == [3, 3, 1]
    calls.clear()
    predict_rows(engine, rows, PredictConfig(SamplingConfig(samples=1, max_new_tokens=4), chunk_rows=5))
    assert calls == [5, 2]


@pytest.mark.parametrize("close_engine", [True, False])
def test_predict_closes_the_engine_unless_told_not_to(
    tiny_model, sample_csv, tmp_path, monkeypatch, close_engine
):
    import recoverlib.executors.base as executors
    from recoverlib.pipeline import predict

    closed, made = [], []
    real = executors.make_engine

    def make(*args, **kwargs):
        eng = real(*args, **kwargs)
        made.append(eng)
        monkeypatch.setattr(eng, "close", lambda: closed.append(True))
        return eng

    monkeypatch.setattr(executors, "make_engine", make)
    rows = tmp_path / "in.csv"
    rows.write_text("\n".join(sample_csv.read_text().splitlines()[:3]) + "\n")
    predict(
        tiny_model,
        rows,
        tmp_path / "out.csv",
        engine="hf",
        config=PredictConfig(SamplingConfig(samples=1, max_new_tokens=4)),
        close_engine=close_engine,
    )
    assert (tmp_path / "out.csv").is_file() and len(made) == 1
    assert closed == ([True] if close_engine else [])
    type(made[0]).close(made[0])
