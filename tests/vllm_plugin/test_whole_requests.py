"""The whole-requests cure on a stand-in scheduler, then on vLLM's own (an in-process engine on the tiny
model: a malformed tag is held until the deadline, then served; a server's tag check is exercised in
tests/engines/test_openai.py)."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import pytest

from recoverlib.vllm_plugin.whole_requests import (
    DEFAULT_HOLD_S,
    HOLD_ENV,
    Group,
    group_xargs,
    hold_seconds,
    install,
    request_group,
    tag_problem,
)


class Scheduler:
    """What the cure relies on of vLLM's: ``add_request`` queues, ``finish_requests`` aborts queued ids,
    ``has_requests`` says whether anything is queued."""

    def __init__(self):
        self.queued: list[str] = []
        self.finished: list[str] = []

    def add_request(self, request) -> None:
        self.queued.append(request.request_id)

    def has_requests(self) -> bool:
        return bool(self.queued)

    def finish_requests(self, request_ids, finished_status):
        ids = self.queued if request_ids is None else [i for i in self.queued if i in request_ids]
        self.finished += ids
        self.queued = [i for i in self.queued if i not in ids]
        return ids


def request(rid: str, extra: dict | None = None):
    return SimpleNamespace(request_id=rid, sampling_params=SimpleNamespace(extra_args=extra))


class Clock:
    """Seconds the test sets."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def scheduler(clock, monkeypatch):
    monkeypatch.setenv(HOLD_ENV, "5")
    cls = type("Patched", (Scheduler,), {})
    install(cls, clock)
    return cls()


def test_a_group_waits_for_its_last_request_then_queues_in_arrival_order(scheduler):
    tag = group_xargs("g", prompts=2, samples=2)
    for i, rid in enumerate(["0_p-0", "1_p-0", "0_p-1"]):
        scheduler.add_request(request(rid, tag))
        assert scheduler.queued == [], i
    scheduler.add_request(request("plain"))  # not in a group: queued at once
    assert scheduler.queued == ["plain"]
    scheduler.add_request(request("1_p-1", tag))
    assert scheduler.queued == ["plain", "0_p-0", "1_p-0", "0_p-1", "1_p-1"]


def test_groups_are_held_apart(scheduler):
    scheduler.add_request(request("a0", group_xargs("a", 2, 1)))
    scheduler.add_request(request("b0", group_xargs("b", 1, 1)))
    assert scheduler.queued == ["b0"]
    scheduler.add_request(request("a1", group_xargs("a", 2, 1)))
    assert scheduler.queued == ["b0", "a0", "a1"]


def test_an_abort_of_a_held_request_queues_its_group_first_so_vllm_aborts_it(scheduler):
    tag = group_xargs("g", 3, 1)
    scheduler.add_request(request("x", tag))
    scheduler.add_request(request("y", tag))
    scheduler.add_request(request("other", group_xargs("h", 2, 1)))
    aborted = scheduler.finish_requests(iter(["x"]), "aborted")  # an iterator: read once by vLLM, once here
    assert aborted == ["x"] and scheduler.finished == ["x"]
    assert scheduler.queued == ["y"]  # the rest of its group runs; the untouched group stays held
    assert scheduler.finish_requests(None, "aborted") == ["y", "other"]  # a shutdown: every held one too


def test_a_single_id_string_is_one_id(scheduler):
    scheduler.add_request(request("ab", group_xargs("g", 2, 1)))
    assert scheduler.finish_requests("ab", "aborted") == ["ab"]


@pytest.mark.parametrize(
    "extra",
    [None, {}, {"other": 1}, {"recoverlib_group": "", "recoverlib_group_size": 2},
     {"recoverlib_group": "g", "recoverlib_group_size": 0}, {"recoverlib_group": "g"},
     {"recoverlib_group": "g", "recoverlib_group_size": "2"}],
)
def test_requests_without_a_well_formed_group_pass_straight_through(scheduler, extra):
    assert request_group(extra) is None
    scheduler.add_request(request("r", extra))
    assert scheduler.queued == ["r"]


def test_the_group_a_client_sends_is_read_back():
    assert request_group(group_xargs("name", prompts=4, samples=3)) == Group("name", 12)


@pytest.mark.parametrize("extra", [{"recoverlib_group": "x" * 201, "recoverlib_group_size": 2},
                                   {"recoverlib_group": "g", "recoverlib_group_size": True},
                                   {"recoverlib_group": "g", "recoverlib_group_size": 1 << 21}])
def test_impossible_tags_are_no_group(extra):
    assert request_group(extra) is None


def test_a_held_group_is_released_at_its_deadline_and_logged(scheduler, clock, caplog):
    scheduler.add_request(request("a", group_xargs("g", 3, 1)))
    clock.now = 4.9
    assert scheduler.has_requests() and scheduler.queued == []  # held: vLLM keeps stepping
    clock.now = 5.0
    with caplog.at_level(logging.WARNING, "recoverlib"):
        assert scheduler.has_requests() and scheduler.queued == ["a"]
    assert "group g released after 5.0 s with 1 of its 3" in caplog.text
    scheduler.queued.clear()
    assert not scheduler.has_requests()  # nothing held, nothing queued: vLLM may wait for input


def test_a_member_naming_another_size_releases_its_group(scheduler, caplog):
    scheduler.add_request(request("a", group_xargs("g", 3, 1)))
    with caplog.at_level(logging.WARNING, "recoverlib"):
        scheduler.add_request(request("b", group_xargs("g", 2, 1)))
    assert scheduler.queued == ["a", "b"] and "named sizes 3 and 2" in caplog.text


def test_a_malformed_tag_is_logged_and_queued_at_once(scheduler, caplog):
    with caplog.at_level(logging.WARNING, "recoverlib"):
        scheduler.add_request(request("a", {"recoverlib_group": "g", "recoverlib_group_size": "3"}))
    assert scheduler.queued == ["a"] and "malformed group tag" in caplog.text


def test_a_servers_check_of_a_tag_against_its_request():
    assert tag_problem(None, 2, 3) is None and tag_problem({"other": 1}, 2, 3) is None
    assert tag_problem(group_xargs("g", 2, 3), prompts=2, n=3) is None
    assert "does not match the request: 2 prompt(s) x n=3 = 6" in tag_problem(group_xargs("g", 7, 1), 2, 3)
    assert "give a name of 1-200 characters" in tag_problem({"recoverlib_group_size": 6}, 2, 3)


def test_the_hold_comes_from_the_environment():
    assert hold_seconds({}) == DEFAULT_HOLD_S and hold_seconds({HOLD_ENV: "2.5"}) == 2.5
    assert hold_seconds({HOLD_ENV: "soon"}) == hold_seconds({HOLD_ENV: "-1"}) == DEFAULT_HOLD_S


def test_vllms_scheduler_is_patched_once_by_the_plugin():
    pytest.importorskip("vllm", reason="vLLM is not installed")
    from vllm.v1.core.sched.scheduler import Scheduler as VllmScheduler

    from recoverlib.vllm_plugin import register

    register()
    register()
    for fn in (VllmScheduler.add_request, VllmScheduler.finish_requests, VllmScheduler.has_requests):
        assert fn._recoverlib and not getattr(fn.__wrapped__, "_recoverlib", False)


@pytest.mark.slow
def test_vllms_scheduler_holds_a_malformed_group_until_its_deadline(tiny_model, monkeypatch):
    """A tag whose size can never be reached (3 for one prompt) on vLLM's real scheduler: the request waits
    the hold (2 s here), then is served; the hold time is what benchmarks/bad_inputs.py records."""
    pytest.importorskip("vllm", reason="vLLM is not installed")
    from vllm import LLM, SamplingParams

    from recoverlib.runtime import ENGINE_ENVIRON, environ

    monkeypatch.setenv(HOLD_ENV, "2")
    holder = Clock()  # the engine's stand-in (any class instance): what vLLM writes is undone at release
    with ENGINE_ENVIRON.building(holder), environ(VLLM_ENABLE_V1_MULTIPROCESSING="0"):
        llm = LLM(str(tiny_model), max_model_len=256, enforce_eager=True, max_num_seqs=8)
    try:
        from vllm.v1.core.sched.scheduler import Scheduler as VllmScheduler

        assert VllmScheduler.has_requests._recoverlib  # the plugin ran in this process (vLLM loaded it)
        plain = SamplingParams(max_tokens=4, temperature=0)
        start = time.monotonic()
        llm.generate(["Hello there"], plain, use_tqdm=False)
        untagged = time.monotonic() - start
        start = time.monotonic()
        out = llm.generate(["Hello there"], SamplingParams(max_tokens=4, temperature=0,
                                                           extra_args=group_xargs("never-whole", 3, 1)),
                           use_tqdm=False)
        held = time.monotonic() - start
        assert len(out[0].outputs[0].token_ids) == 4  # served after the hold, not dropped
        assert 2.0 <= held < untagged + 20, (held, untagged)
    finally:
        del llm
        ENGINE_ENVIRON.release(holder)
