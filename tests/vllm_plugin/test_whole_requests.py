"""The whole-requests cure on a stand-in scheduler (vLLM's own is patched by the plugin and exercised through
a server in tests/engines/test_openai.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from recoverlib.vllm_plugin.whole_requests import Group, group_xargs, install, request_group


class Scheduler:
    """What the cure relies on of vLLM's: ``add_request`` queues, ``finish_requests`` aborts queued ids."""

    def __init__(self):
        self.queued: list[str] = []
        self.finished: list[str] = []

    def add_request(self, request) -> None:
        self.queued.append(request.request_id)

    def finish_requests(self, request_ids, finished_status):
        ids = self.queued if request_ids is None else [i for i in self.queued if i in request_ids]
        self.finished += ids
        self.queued = [i for i in self.queued if i not in ids]
        return ids


def request(rid: str, extra: dict | None = None):
    return SimpleNamespace(request_id=rid, sampling_params=SimpleNamespace(extra_args=extra))


@pytest.fixture
def scheduler():
    cls = type("Patched", (Scheduler,), {})
    install(cls)
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


def test_vllms_scheduler_is_patched_once_by_the_plugin():
    pytest.importorskip("vllm", reason="vLLM is not installed")
    from vllm.v1.core.sched.scheduler import Scheduler as VllmScheduler

    from recoverlib.vllm_plugin import register

    register()
    register()
    for fn in (VllmScheduler.add_request, VllmScheduler.finish_requests):
        assert fn._recoverlib and not getattr(fn.__wrapped__, "_recoverlib", False)
