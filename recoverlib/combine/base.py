"""Combination strategies: a config dataclass per strategy, a handler registered by that config's type.

A row's samples (every adapter, every sampled prediction, already cleaned) go in; one prompt comes out.
The combiner never sees models or CSVs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from recoverlib.errors import RecoverlibError


@dataclass(frozen=True)
class Sample:
    """One cleaned prediction: which adapter made it (None = base) and its sample index."""

    adapter: str | None
    index: int
    text: str


Handler = Callable[[object, Sequence[Sample]], str]
_HANDLERS: dict[type, Handler] = {}


def register_strategy(config_type: type):
    """Decorator: ``handler(config, samples) -> prompt`` serves configs of ``config_type``."""

    def wrap(handler: Handler) -> Handler:
        _HANDLERS[config_type] = handler
        return handler

    return wrap


def combine(samples: Sequence[Sample], config) -> str:
    """One prompt from a row's samples, by the strategy ``config``'s type names. May return "" (no usable text)."""
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise RecoverlibError(f"no combination strategy for {type(config).__name__}")
    return handler(config, samples)


def round_robin(samples: Sequence[Sample]) -> list[Sample]:
    """Samples ordered index-major across adapters (a0 b0 a1 b1 ...), so early text covers every adapter."""
    adapters = list(dict.fromkeys(s.adapter for s in samples))
    return sorted(samples, key=lambda s: (s.index, adapters.index(s.adapter)))
