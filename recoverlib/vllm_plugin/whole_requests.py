"""Whole requests for vLLM's scheduler: the prompts of one client request start together.

vLLM's OpenAI server turns a request with a list of prompts (and ``n`` samples each) into one engine request
per prompt and sample, sent to the engine core one by one. The core schedules whatever has arrived when it is
free, so on a busy machine a request's first step may hold some of its prompts and not the rest. vLLM's CPU
numerics depend on the batch (which rows share a step), so runs with the same seed came out two ways: 19 of 30
differed from the first in one sample of 108 (benchmarks/results/seeded_repeats.md, two loaded cores).

A client that wants its prompts scheduled as one batch names them a group in ``vllm_xargs``
(``recoverlib_group``: a name unique to the request; ``recoverlib_group_size``: prompts x ``n``). The
scheduler holds a group's engine requests until the last one arrives, then queues them together, in arrival
order, as the in-process engine does. Requests without a group are untouched. An abort (a client that went
away, a shutdown) that touches a held request first queues its whole group, so vLLM aborts and reports it as
it would any other: nothing is dropped here, and a group whose size was wrong waits only until the client's
timeout aborts it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

GROUP_KEY, SIZE_KEY = "recoverlib_group", "recoverlib_group_size"
HELD = "_recoverlib_held_groups"  # on the scheduler instance: group name -> requests held so far


@dataclass(frozen=True)
class Group:
    """A client request's group: its name and how many engine requests it has (prompts x samples)."""

    name: str
    size: int


def group_xargs(name: str, prompts: int, samples: int) -> dict[str, str | int]:
    """The ``vllm_xargs`` a client sends to have ``prompts`` x ``samples`` engine requests start together."""
    return {GROUP_KEY: name, SIZE_KEY: prompts * samples}


def request_group(extra_args: dict | None) -> Group | None:
    """The group a request's ``SamplingParams.extra_args`` name, or None (no group, or a malformed one)."""
    if not extra_args or GROUP_KEY not in extra_args:
        return None
    name, size = extra_args.get(GROUP_KEY), extra_args.get(SIZE_KEY)
    if not isinstance(name, str) or not name or not isinstance(size, int) or size < 1:
        return None
    return Group(name, size)


def _extra_args(request) -> dict | None:
    params = getattr(request, "sampling_params", None)
    return getattr(params, "extra_args", None)


def install(scheduler_cls) -> None:
    """Patch ``add_request`` and ``finish_requests`` of ``scheduler_cls`` (vLLM's v1 ``Scheduler``) to hold
    groups."""
    add, finish = scheduler_cls.add_request, scheduler_cls.finish_requests

    def held(scheduler) -> dict[str, list]:
        return scheduler.__dict__.setdefault(HELD, {})

    def add_request(self, request) -> None:
        group = request_group(_extra_args(request))
        if group is None:
            return add(self, request)
        members = held(self).setdefault(group.name, [])
        members.append(request)
        if len(members) >= group.size:
            for member in held(self).pop(group.name):
                add(self, member)
        return None

    def finish_requests(self, request_ids: str | Iterable[str] | None, finished_status):
        if isinstance(request_ids, str):
            request_ids = (request_ids,)
        elif request_ids is not None:
            request_ids = set(request_ids)  # read twice below: an iterator would be spent
        groups = held(self)
        touched = [name for name, members in groups.items()
                   if request_ids is None or any(m.request_id in request_ids for m in members)]
        for name in touched:
            for member in groups.pop(name):
                add(self, member)
        return finish(self, request_ids, finished_status)

    for name, fn in (("add_request", add_request), ("finish_requests", finish_requests)):
        original = getattr(scheduler_cls, name)
        fn.__wrapped__, fn.__doc__, fn._recoverlib = original, original.__doc__, True
        setattr(scheduler_cls, name, fn)
