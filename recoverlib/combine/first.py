"""``first``: the row's first non-empty prediction (index 0 of the first adapter): the single-answer baseline.

With greedy decoding this is the greedy prediction; tuning reports every strategy as a paired difference
against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from recoverlib.combine.base import Sample, Strategy, distinct_texts


@dataclass(frozen=True)
class FirstConfig:
    """No options: the first non-empty sample in round-robin order."""

    strategy: ClassVar[str] = "first"  # its name in JSON configs and the registry


def _first(config: FirstConfig, samples: Sequence[Sample], ctx, draft) -> str:
    texts = distinct_texts(samples)
    return texts[0] if texts else ""


STRATEGY = Strategy(FirstConfig, _first)
