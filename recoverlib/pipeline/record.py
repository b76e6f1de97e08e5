"""Where a run's samples go: the samples file (JSONL, one line per row and base, input order) or memory.

Chunks may finish in any order (several workers); :class:`InOrder` releases them in input order, so the file
reads the same whatever executed them, and a run killed at any moment and resumed with the same options
writes the same bytes as one that never stopped. With a samples file the driver keeps no samples in memory:
finishing reads them back block by block (:meth:`SampleStore.samples_of`).

The file's first line records the settings the samples depend on (:mod:`~recoverlib.pipeline.run_settings`);
a resume with other settings is refused in one line naming the first difference, before anything is
sampled or written. A file written before that line existed is resumed with a warning that its settings
cannot be checked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from recoverlib.combine import Sample
from recoverlib.errors import RecoverlibError
from recoverlib.io import (
    append_samples,
    is_samples_header,
    iter_sample_lines,
    mend_last_line,
    parse_sample_line,
    read_samples_header,
    write_samples_header,
)
from recoverlib.pipeline.chunks import Chunk
from recoverlib.pipeline.run_settings import first_difference

log = logging.getLogger("recoverlib")


class InOrder:
    """Finished chunks handed over in any order, released in input order (early ones held back)."""

    def __init__(self, chunks: Sequence[Chunk]):
        self._order = [c.index for c in chunks]
        self._next = 0
        self._held: dict[int, tuple[Chunk, dict]] = {}

    def add(self, chunk: Chunk, got: dict) -> list[tuple[Chunk, dict]]:
        """Hold ``chunk``; return the chunks now ready, in input order."""
        self._held[chunk.index] = (chunk, got)
        ready = []
        while self._next < len(self._order) and self._order[self._next] in self._held:
            ready.append(self._held.pop(self._order[self._next]))
            self._next += 1
        return ready

    @property
    def held(self) -> int:
        """Chunks finished but waiting for an earlier one."""
        return len(self._held)


class SampleStore:
    """A run's samples across its bases: in ``path`` (a samples file) when given, else in memory.

    ``resume``: continue a file an earlier run of the same settings wrote (a last line cut short by a crash
    is dropped, with a warning, and its row sampled again); otherwise a file that already holds samples is
    refused. ``settings``: what the samples depend on
    (:func:`~recoverlib.pipeline.run_settings.run_settings`), recorded in the file's first line and checked
    on resume. The file is started (replacing one without samples) when the first rows are recorded, so a
    run that stops before any row leaves nothing behind.
    """

    def __init__(self, path: str | Path | None, ids: Sequence[str], resume: bool = False,
                 settings: dict | None = None):
        self.path = Path(path) if path else None
        self._ids = set(ids)
        self._memory: dict[str, tuple[Sample, ...]] = {}
        self._index: dict[str, list[int]] | None = None
        self._start: dict | None = None  # the settings line to start the file with, before its first rows
        if self.path is None:
            return
        written, has_samples = read_samples_header(self.path) if self.path.is_file() else (None, False)
        if has_samples and not resume:
            raise RecoverlibError(
                f"samples file {self.path} already holds samples: pass --resume to continue it,"
                " or name a new file (nothing was changed)"
            )
        if has_samples:
            self._check_resumable(written, settings)
            mend_last_line(self.path)
            stray = {row_id for row_id, _, _ in iter_sample_lines(self.path)} - self._ids
            if stray:
                raise RecoverlibError(
                    f"{self.path}: samples for ids not in the input ({', '.join(sorted(stray)[:3])});"
                    " not resuming"
                )
            return
        # Started (replacing a file without samples) when the first rows come: a run that stops before any
        # row is sampled leaves nothing behind.
        self._start = settings if settings is not None else {}

    def _check_resumable(self, written: dict | None, settings: dict | None) -> None:
        """One line naming the first setting the file was written with that this run changes."""
        if settings is None:
            return
        if written is None:
            log.warning("%s was written before recoverlib recorded a run's settings in the samples file:"
                        " resuming it without checking that they are this run's", self.path)
            return
        diff = first_difference(written, settings)
        if diff:
            name, old, new = diff
            raise RecoverlibError(
                f"{self.path} was written with {name} {old}; this run has {name} {new}: resume with the"
                " settings it was written with, or name a new --samples-file (nothing was changed)"
            )

    def done(self, base: str | None) -> set[str]:
        """The rows ``base`` already sampled (read from the file; none in memory before the run)."""
        if self.path is None or self._start is not None or not self.path.is_file():
            return set()
        done = {row_id for row_id, b, _ in iter_sample_lines(self.path) if b == base}
        log.info("resuming: %d of %d rows already sampled in %s", len(done), len(self._ids), self.path)
        return done

    def append(self, rows: Sequence[tuple[str, tuple[Sample, ...]]], base: str | None) -> None:
        """Record finished rows (in input order) of ``base``."""
        if self.path is None:
            for row_id, samples in rows:
                self._memory[row_id] = self._memory.get(row_id, ()) + tuple(samples)
            return
        if not rows:
            return
        if self._start is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._start:
                write_samples_header(self.path, self._start)
            else:
                self.path.write_text("")
            self._start = None
        append_samples(self.path, rows, base)
        self._index = None  # the file grew

    def samples_of(self, ids: Sequence[str]) -> dict[str, tuple[Sample, ...]]:
        """Every base's samples of ``ids`` (in file order), read from the file by offset (memory stays
        bounded)."""
        if self.path is None:
            return {i: self._memory.get(i, ()) for i in ids}
        if self._start is not None:  # no row sampled yet: the file is not ours yet
            return {}
        if self._index is None:
            self._index = _line_offsets(self.path)
        out: dict[str, tuple[Sample, ...]] = {}
        with open(self.path, "rb") as fh:
            for row_id in ids:
                for offset in self._index.get(row_id, ()):
                    fh.seek(offset)
                    _, _, samples = parse_sample_line(fh.readline().decode(), self.path, 0)
                    out[row_id] = out.get(row_id, ()) + samples
        return out


def _line_offsets(path: Path) -> dict[str, list[int]]:
    """Row id -> byte offsets of its lines (one per base that sampled it)."""
    index: dict[str, list[int]] = {}
    with open(path, "rb") as fh:
        offset = 0
        for n, line in enumerate(fh):
            if line.strip() and not (n == 0 and is_samples_header(line)):
                index.setdefault(str(json.loads(line)["id"]), []).append(offset)
            offset += len(line)
    return index
