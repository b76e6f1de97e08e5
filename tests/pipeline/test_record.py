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
