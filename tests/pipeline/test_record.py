"""Chunks at fixed positions, finished chunks released in input order, the samples store (file or memory)."""

from __future__ import annotations

import pytest

from recoverlib.errors import RecoverlibError
from recoverlib.io import Row, Sample
from recoverlib.pipeline.chunks import plan_chunks
from recoverlib.pipeline.record import InOrder, SampleStore

ROWS = [Row(str(i), f"t{i}", f"T{i}") for i in range(7)]


def test_chunks_sit_at_fixed_positions_and_skip_finished_ones():
    chunks = plan_chunks(ROWS, 3)
    assert [(c.index, c.start, [r.id for r in c.rows]) for c in chunks] == [
        (0, 0, ["0", "1", "2"]), (1, 3, ["3", "4", "5"]), (2, 6, ["6"])]
    assert chunks[1].keys() == [3, 4, 5]
    left = plan_chunks(ROWS, 3, done={"0", "1", "2", "3"})
    # a chunk cut short is served whole
    assert [c.index for c in left] == [1, 2] and left[0].rows[0].id == "3"


def test_in_order_holds_early_chunks_back():
    chunks = plan_chunks(ROWS, 3)
    order = InOrder(chunks)
    assert order.add(chunks[2], {"c": 2}) == [] and order.held == 1
    assert order.add(chunks[1], {"c": 1}) == []
    assert [c.index for c, _ in order.add(chunks[0], {"c": 0})] == [0, 1, 2] and order.held == 0


def _samples(tag: str, base=None):
    return (Sample("a", 0, f"{tag}-0", base), Sample("a", 1, f"{tag}-1", base))


@pytest.mark.parametrize("on_disk", [True, False])
def test_store_reads_every_base_back_by_row(on_disk, tmp_path):
    store = SampleStore(tmp_path / "s.jsonl" if on_disk else None, ["1", "2"])
    store.append([("1", _samples("m1", "m")), ("2", _samples("m2", "m"))], "m")
    store.append([("2", _samples("g2", "g"))], "g")
    got = store.samples_of(["2", "1"])
    assert [s.text for s in got["2"]] == ["m2-0", "m2-1", "g2-0", "g2-1"] and len(got["1"]) == 2
    assert store.done("g") == ({"2"} if on_disk else set())


def test_store_refuses_to_overwrite_or_to_resume_another_input(tmp_path):
    path = tmp_path / "s.jsonl"
    SampleStore(path, ["1"]).append([("1", _samples("x"))], None)
    with pytest.raises(RecoverlibError, match="already holds samples: pass --resume"):
        SampleStore(path, ["1"])
    with pytest.raises(RecoverlibError, match="samples for ids not in the input"):
        SampleStore(path, ["9"], resume=True)
    assert SampleStore(path, ["1"], resume=True).done(None) == {"1"}


SETTINGS = {"samples": 4, "seed": 0, "model": "sha256:aa", "engine": "vllm"}


def test_a_resume_with_other_settings_is_refused_naming_the_first_difference(tmp_path):
    path = tmp_path / "s.jsonl"
    SampleStore(path, ["1", "2"], settings=SETTINGS).append([("1", _samples("x"))], None)
    before = path.read_bytes()
    with pytest.raises(RecoverlibError, match=r"written with seed 0; this run has seed 7: resume with the"
                                              r" settings it was written with.*nothing was changed"):
        SampleStore(path, ["1", "2"], resume=True, settings={**SETTINGS, "seed": 7, "engine": "hf"})
    with pytest.raises(RecoverlibError, match="written with model sha256:aa; this run has model sha256:bb"):
        SampleStore(path, ["1", "2"], resume=True, settings={**SETTINGS, "model": "sha256:bb"})
    with pytest.raises(RecoverlibError, match="with adapter a None; this run has adapter a sha256:cc"):
        SampleStore(path, ["1", "2"], resume=True, settings={**SETTINGS, "adapter a": "sha256:cc"})
    assert path.read_bytes() == before
    store = SampleStore(path, ["1", "2"], resume=True, settings=dict(SETTINGS))  # the same: continued
    assert store.done(None) == {"1"}


def test_a_samples_file_from_before_the_settings_line_is_resumed_with_a_warning(tmp_path, caplog):
    path = tmp_path / "s.jsonl"
    SampleStore(path, ["1", "2"]).append([("1", _samples("x"))], None)  # no settings: the old format
    assert path.read_text().startswith('{"id": "1"')
    store = SampleStore(path, ["1", "2"], resume=True, settings=SETTINGS)
    assert store.done(None) == {"1"} and "resuming it without checking" in caplog.text


def test_a_file_with_settings_but_no_samples_yet_is_started_again(tmp_path):
    path = tmp_path / "s.jsonl"
    SampleStore(path, ["1"], settings=SETTINGS)  # a run that stopped before its first chunk
    SampleStore(path, ["1"], settings={**SETTINGS, "seed": 3})  # not "already holds samples"
    store = SampleStore(path, ["1"], resume=True, settings={**SETTINGS, "seed": 5})
    store.append([("1", _samples("x"))], None)
    assert '"seed": 5' in path.read_text().splitlines()[0] and store.samples_of(["1"])["1"][0].text == "x-0"
