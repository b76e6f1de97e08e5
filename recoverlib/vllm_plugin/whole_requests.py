"""Whole requests for vLLM's scheduler: the prompts of one client request start together.

vLLM's OpenAI server turns a request with a list of prompts (and ``n`` samples each) into one engine request
per prompt and sample, sent to the engine core one by one. The core schedules whatever has arrived when it is
free, so on a busy machine a request's first step may hold some of its prompts and not the rest. vLLM's CPU
numerics depend on the batch (which rows share a step), so runs with the same seed came out two ways: 19 of 30
differed from the first in one sample of 108 (benchmarks/results/seeded_repeats.md, two loaded cores).

A client that wants its prompts scheduled as one batch names them a group in ``vllm_xargs``
(``recoverlib_group``: a name unique to the request; ``recoverlib_group_size``: prompts x ``n``). The
scheduler holds a group's engine requests until the last one arrives, then queues them together, in arrival
order, as the in-process engine does. Requests without a group are untouched. Only a client whose requests
reach the engine one by one needs this (a server's, or an engine core in a process of its own); an in-process
engine adds all of a call's requests before its first step and sends no group.

Nothing is held forever or dropped:

- the server checks a completion request's tag against the request itself (its prompts x ``n``) and refuses
  a wrong one with a 400 before anything is queued (:func:`tag_problem`);
- the scheduler holds a group at most ``RECOVERLIB_GROUP_HOLD_S`` seconds (default :data:`DEFAULT_HOLD_S`;
  ``recoverlib serve --group-hold-s``) from its first request, then queues what arrived and logs a warning
  (a tag that did not reach the server's check: another endpoint, a client of the engine core);
- a malformed tag, or a member whose size disagrees with its group's, is logged and its requests queued
  at once;
- an abort (a client that went away, a shutdown) that touches a held request first queues its whole group, so
  vLLM aborts and reports it as it would any other.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

log = logging.getLogger("recoverlib")

GROUP_KEY, SIZE_KEY = "recoverlib_group", "recoverlib_group_size"
HELD = "_recoverlib_held_groups"  # on the scheduler instance: group name -> HeldGroup
HOLD_S = "_recoverlib_hold_s"  # on the scheduler instance: its deadline
HOLD_ENV = "RECOVERLIB_GROUP_HOLD_S"
DEFAULT_HOLD_S = 10.0  # a group's requests arrive within milliseconds, a second or two on loaded cores
MAX_NAME, MAX_SIZE = 200, 1 << 20


@dataclass(frozen=True)
class Group:
    """A client request's group: its name and how many engine requests it has (prompts x samples)."""

    name: str
    size: int


@dataclass
class HeldGroup:
    """What the scheduler holds of a group: its size, when its first request came, the requests so far."""

    size: int
    since: float
    members: list = field(default_factory=list)


def group_xargs(name: str, prompts: int, samples: int) -> dict[str, str | int]:
    """The ``vllm_xargs`` a client sends to have ``prompts`` x ``samples`` engine requests start together."""
    return {GROUP_KEY: name, SIZE_KEY: prompts * samples}


def request_group(extra_args: dict | None) -> Group | None:
    """The group a request's ``SamplingParams.extra_args`` name, or None (no group, or a malformed one)."""
    if not extra_args or GROUP_KEY not in extra_args:
        return None
    name, size = extra_args.get(GROUP_KEY), extra_args.get(SIZE_KEY)
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_SIZE:
        return None
    return Group(name, size)


def tag_problem(xargs: dict | None, prompts: int, n: int) -> str | None:
    """Why a completion request's group tag cannot be right for the request (``prompts`` prompts, ``n``
    samples each), or None (no tag, or a right one)."""
    if not xargs or GROUP_KEY not in xargs and SIZE_KEY not in xargs:
        return None
    group = request_group(xargs)
    if group is None:
        return (f"vllm_xargs {GROUP_KEY}/{SIZE_KEY}: give a name of 1-{MAX_NAME} characters and a size of"
                f" 1-{MAX_SIZE} (got {xargs.get(GROUP_KEY)!r}, {xargs.get(SIZE_KEY)!r})")
    if group.size != prompts * n:
        return (f"vllm_xargs {SIZE_KEY} {group.size} does not match the request: {prompts} prompt(s) x n={n}"
                f" = {prompts * n}")
    return None


def hold_seconds(environ=None) -> float:
    """The longest a group is held (``RECOVERLIB_GROUP_HOLD_S``, else :data:`DEFAULT_HOLD_S`)."""
    text = (os.environ if environ is None else environ).get(HOLD_ENV)
    try:
        value = float(text) if text else DEFAULT_HOLD_S
    except ValueError:
        value = -1.0
    if not value > 0:
        log.warning("%s=%r is not a number of seconds > 0: %g s", HOLD_ENV, text, DEFAULT_HOLD_S)
        return DEFAULT_HOLD_S
    return value


def _extra_args(request) -> dict | None:
    params = getattr(request, "sampling_params", None)
    return getattr(params, "extra_args", None)


def install(scheduler_cls, clock=time.monotonic) -> None:
    """Patch ``add_request``, ``finish_requests`` and ``has_requests`` of ``scheduler_cls`` (vLLM's v1
    ``Scheduler``) to hold groups; ``clock``: seconds (tests pass their own)."""
    add, finish, has_requests = scheduler_cls.add_request, scheduler_cls.finish_requests, \
        scheduler_cls.has_requests

    def held(scheduler) -> dict[str, HeldGroup]:
        return scheduler.__dict__.setdefault(HELD, {})

    def hold_s(scheduler) -> float:  # read once per scheduler (an engine's), when it first holds a group
        return scheduler.__dict__.setdefault(HOLD_S, hold_seconds())

    def release(scheduler, name: str) -> None:
        for member in held(scheduler).pop(name).members:
            add(scheduler, member)

    def add_request(self, request) -> None:
        extra = _extra_args(request)
        group = request_group(extra)
        if group is None:
            if extra and GROUP_KEY in extra:
                log.warning("recoverlib whole requests: request %s has a malformed group tag (%r, %r): queued"
                            " at once", request.request_id, extra.get(GROUP_KEY), extra.get(SIZE_KEY))
            return add(self, request)
        groups = held(self)
        entry = groups.get(group.name)
        if entry is not None and entry.size != group.size:
            log.warning("recoverlib whole requests: group %s named sizes %d and %d: its %d request(s) queued"
                        " now", group.name, entry.size, group.size, len(entry.members) + 1)
            release(self, group.name)
            return add(self, request)
        if entry is None:
            entry = groups[group.name] = HeldGroup(group.size, clock())
        entry.members.append(request)
        if len(entry.members) >= entry.size:
            release(self, group.name)
        return None

    def finish_requests(self, request_ids: str | Iterable[str] | None, finished_status):
        if isinstance(request_ids, str):
            request_ids = (request_ids,)
        elif request_ids is not None:
            request_ids = set(request_ids)  # read twice below: an iterator would be spent
        touched = [name for name, entry in held(self).items()
                   if request_ids is None or any(m.request_id in request_ids for m in entry.members)]
        for name in touched:
            release(self, name)
        return finish(self, request_ids, finished_status)

    def has_requests_held(self) -> bool:
        # vLLM's loop asks this before every step; held groups keep it stepping, so a deadline fires even
        # when nothing else arrives (and an idle wait for the rest of a group sleeps 1 ms, not a busy spin).
        groups = held(self)
        now = clock()
        for name in [n for n, entry in groups.items() if now - entry.since >= hold_s(self)]:
            entry = groups[name]
            log.warning("recoverlib whole requests: group %s released after %.1f s with %d of its %d"
                        " request(s) (the rest never came)", name, now - entry.since, len(entry.members),
                        entry.size)
            release(self, name)
        if has_requests(self):
            return True
        if groups:
            time.sleep(0.001)
            return True
        return False

    for name, fn in (("add_request", add_request), ("finish_requests", finish_requests),
                     ("has_requests", has_requests_held)):
        original = getattr(scheduler_cls, name)
        fn.__wrapped__, fn.__doc__, fn._recoverlib = original, original.__doc__, True
        setattr(scheduler_cls, name, fn)


def install_tag_check(serving_cls) -> None:
    """Patch ``render_completion_request`` of ``serving_cls`` (vLLM's ``OpenAIServingCompletion``) to refuse a
    group tag that does not fit its request (:func:`tag_problem`) with a 400, before anything is queued."""
    original = serving_cls.render_completion_request

    async def render_completion_request(self, request, *args, **kwargs):
        result = await original(self, request, *args, **kwargs)
        if isinstance(result, list):
            problem = tag_problem(getattr(request, "vllm_xargs", None), len(result), request.n or 1)
            if problem:
                return self.create_error_response(problem)
        return result

    render_completion_request.__wrapped__, render_completion_request._recoverlib = original, True
    render_completion_request.__doc__ = original.__doc__
    serving_cls.render_completion_request = render_completion_request
