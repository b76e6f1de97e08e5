"""``concat``: join a row's distinct predictions; the hedge that moves the embedding toward their mean."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from recoverlib.combine.base import Sample, register_strategy, round_robin


@dataclass(frozen=True)
class ConcatConfig:
    """Join distinct non-empty predictions with ``separator``, in round-robin order across adapters."""

    separator: str = " "
    max_parts: int | None = None  # keep at most this many distinct predictions (None: all)


def concat_predictions(texts: Sequence[str], separator: str = " ", max_parts: int | None = None) -> str:
    """Distinct non-empty texts joined in first-seen order; duplicates compare case- and space-insensitively."""
    seen, parts = set(), []
    for text in texts:
        key = " ".join(text.lower().split())
        if key and key not in seen:
            seen.add(key)
            parts.append(text.strip())
    return separator.join(parts[:max_parts])


@register_strategy(ConcatConfig)
def _concat(config: ConcatConfig, samples: Sequence[Sample]) -> str:
    return concat_predictions([s.text for s in round_robin(samples)], config.separator, config.max_parts)
