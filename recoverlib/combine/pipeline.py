"""``pipeline``: steps run in order on one row, each seeing the previous step's draft (e.g. mbr, then
mean-prompt, then suffix, then budget)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from recoverlib.combine.base import Sample, Strategy, apply, strategy_for
from recoverlib.errors import RecoverlibError


@dataclass(frozen=True)
class PipelineConfig:
    """``steps``: strategy configs, first to last; a pipeline may not hold itself (no nesting)."""

    strategy: ClassVar[str] = "pipeline"  # its name in JSON configs and the registry

    steps: tuple = ()

    def __post_init__(self):
        if not self.steps:
            raise RecoverlibError("pipeline: needs at least one step")
        object.__setattr__(self, "steps", tuple(self.steps))  # a list from JSON or a caller becomes hashable
        for step in self.steps:
            if isinstance(step, PipelineConfig):
                raise RecoverlibError("pipeline: a step may not be a pipeline")
            strategy_for(step)


def _pipeline(config: PipelineConfig, samples: Sequence[Sample], ctx, draft):
    for step in config.steps:
        draft = apply(step, samples, ctx, draft)
    return draft


STRATEGY = Strategy(PipelineConfig, _pipeline)
