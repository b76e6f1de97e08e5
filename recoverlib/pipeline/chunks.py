"""Rows in chunks at fixed input positions: chunk ``k`` holds rows ``k * size`` to ``(k + 1) * size - 1``.

Each row is seeded by its input position (its key), so a row's samples do not depend on which executor,
worker, call or resumed run serves it; a chunk cut short is served again whole (the same batches, the same
seeds).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from recoverlib.io import Row


@dataclass(frozen=True)
class Chunk:
    """Rows ``start .. start + len(rows) - 1`` of the input; ``index`` is the chunk's number (input order)."""

    index: int
    start: int
    rows: tuple[Row, ...]

    def keys(self) -> list[int]:
        """The seed key of each row: its input position."""
        return list(range(self.start, self.start + len(self.rows)))


def plan_chunks(rows: Sequence[Row], size: int, done: Collection[str] = ()) -> list[Chunk]:
    """The chunks of ``rows`` (``size`` rows each, at fixed positions) that still hold a row not in
    ``done``."""
    chunks = [
        Chunk(k, start, tuple(rows[start : start + size]))
        for k, start in enumerate(range(0, len(rows), size))
    ]
    return [c for c in chunks if any(r.id not in done for r in c.rows)]
