"""Reading Kaggle rows and truths, writing submissions.

Bad files raise :class:`RecoverlibError` with one line saying what to fix. Bad *rows* (an empty or NaN text)
never stop a run: they are reported and kept, so the caller can give them a fallback prediction.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from recoverlib.errors import RecoverlibError

log = logging.getLogger("recoverlib")

INPUT_COLUMNS = ("id", "original_text", "rewritten_text")
TRUTH_COLUMNS = ("id", "rewrite_prompt")


@dataclass(frozen=True)
class Sample:
    """One cleaned prediction: which adapter made it (None = the base model alone), its sample index, and
    which base model served it (None in a run with one base)."""

    adapter: str | None
    index: int
    text: str
    base: str | None = None


@dataclass(frozen=True)
class Row:
    """One Kaggle row. ``problem`` is set (and the texts may be empty) when the row cannot be served."""

    id: str
    original_text: str
    rewritten_text: str
    rewrite_prompt: str | None = None
    problem: str | None = None


PARQUET = (".parquet", ".pq")


def is_parquet(path: str | Path) -> bool:
    """Parquet by its suffix (``.parquet``, ``.pq``); anything else is CSV."""
    return Path(path).suffix.lower() in PARQUET


def require_pyarrow():
    """pyarrow (what reads and writes Parquet here), or a one-line error naming the extra to install."""
    try:
        import pyarrow
    except ImportError as err:
        raise RecoverlibError(f"Parquet needs pyarrow ({err}): pip install 'recoverlib[parquet]'") from None
    return pyarrow


def read_table(path: str | Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """Read a CSV or Parquet file as strings (ids stay as written) and check the required columns exist,
    once."""
    path = Path(path)
    if not path.is_file():
        raise RecoverlibError(f"{path}: no such file")
    if is_parquet(path):
        require_pyarrow()
    try:
        if is_parquet(path):
            frame = pd.read_parquet(path).astype("string").astype(object)
            frame = frame.where(frame.notna() & (frame != ""), None)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as err:
        kind = "Parquet" if is_parquet(path) else "CSV"
        raise RecoverlibError(f"{path}: not a readable {kind} ({str(err).splitlines()[0]})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        hints = []
        for col in missing:
            close = difflib.get_close_matches(col, [str(c) for c in frame.columns], n=1, cutoff=0.6)
            hints.append(f"{col!r}" + (f" (found {close[0]!r})" if close else ""))
        raise RecoverlibError(
            f"{path}: missing column(s) {', '.join(hints)}; needs {', '.join(columns)}"
            f" and has {', '.join(map(str, frame.columns))}"
        )
    ids = frame["id"]
    if ids.isna().any():
        raise RecoverlibError(f"{path}: {int(ids.isna().sum())} row(s) have an empty id")
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        shown = ", ".join(map(str, dup[:5])) + (" ..." if len(dup) > 5 else "")
        raise RecoverlibError(f"{path}: duplicate id(s) {shown}")
    return frame


def read_rows(path: str | Path, with_truth: bool = False) -> list[Row]:
    """Rows of a Kaggle input CSV (``id, original_text, rewritten_text`` [+ ``rewrite_prompt``]).

    Rows with an empty or missing text get ``problem`` set and a warning; they are not dropped.
    """
    columns = INPUT_COLUMNS + (("rewrite_prompt",) if with_truth else ())
    frame = read_table(path, columns)
    has_truth = "rewrite_prompt" in frame.columns
    rows = []
    for rec in frame.itertuples(index=False):
        texts = {c: getattr(rec, c) for c in ("original_text", "rewritten_text")}
        empty = [c for c, v in texts.items() if not isinstance(v, str) or not v.strip()]
        problem = f"empty {' and '.join(empty)}" if empty else None
        if problem:
            log.warning("row id=%s: %s; it gets the fallback prompt", rec.id, problem)
        truth = rec.rewrite_prompt if has_truth else None
        rows.append(
            Row(
                id=str(rec.id),
                original_text=texts["original_text"] if isinstance(texts["original_text"], str) else "",
                rewritten_text=texts["rewritten_text"] if isinstance(texts["rewritten_text"], str) else "",
                rewrite_prompt=truth if isinstance(truth, str) else None,
                problem=problem,
            )
        )
    return rows


def read_truth(path: str | Path) -> dict[str, str]:
    """``id -> rewrite_prompt`` from a truth CSV; an empty prompt is an error (it cannot be scored)."""
    frame = read_table(path, TRUTH_COLUMNS)
    empty = frame["id"][frame["rewrite_prompt"].isna()]
    if len(empty):
        raise RecoverlibError(f"{path}: empty rewrite_prompt for id(s) {', '.join(map(str, empty[:5]))}")
    return dict(zip(frame["id"].astype(str), frame["rewrite_prompt"], strict=True))


def write_submission(path: str | Path, ids: list[str], prompts: list[str]) -> Path:
    """Write ``id, rewrite_prompt`` (CSV, or Parquet by the suffix) atomically: the file is either the old
    one or the complete new one."""
    if len(ids) != len(prompts):
        raise ValueError(f"{len(ids)} ids but {len(prompts)} prompts")
    with SubmissionWriter(path) as out:
        out.write(ids, prompts)
    return Path(path)


class SubmissionWriter:
    """A submission written block by block (``write``), in place only once whole (``close``; a context manager
    leaves the old file untouched on an error). CSV, or Parquet by the suffix (one row group per block)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if is_parquet(self.path):
            require_pyarrow()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        self._tmp, self._parquet, self._csv_header = Path(tmp), None, True

    def write(self, ids: list[str], prompts: list[str]) -> None:
        frame = pd.DataFrame({"id": ids, "rewrite_prompt": prompts}, dtype=object)
        if is_parquet(self.path):
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame.astype(str), preserve_index=False)
            self._parquet = self._parquet or pq.ParquetWriter(str(self._tmp), table.schema)
            self._parquet.write_table(table)
            return
        with open(self._tmp, "a", newline="") as fh:
            frame.to_csv(fh, index=False, header=self._csv_header)
        self._csv_header = False

    def close(self) -> Path:
        if is_parquet(self.path) and self._parquet is None:
            self.write([], [])  # an empty file still has the schema
        if self._parquet is not None:
            self._parquet.close()
        elif self._csv_header:
            self.write([], [])  # the header of an empty submission
        os.replace(self._tmp, self.path)
        return self.path

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            if self._parquet is not None:
                self._parquet.close()
            self._tmp.unlink(missing_ok=True)


# -- the samples file: JSONL, one line per row, {"id": ..., "samples": [{"adapter", "index", "text"}, ...]},
# after a first line {"recoverlib_samples": FORMAT, "settings": {...}} with what the run sampled with (files
# written before it have none; readers skip it)
SAMPLES_HEADER_KEY = "recoverlib_samples"
SAMPLES_FORMAT = 1


def is_samples_header(line: str | bytes) -> bool:
    """Whether a samples file's line is its settings header (the first line, when there is one)."""
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    return text.lstrip().startswith(f'{{"{SAMPLES_HEADER_KEY}"')


def write_samples_header(path: str | Path, settings: dict) -> None:
    """Start a samples file (replacing what is there) with the settings header, on disk."""
    with open(path, "w") as fh:
        fh.write(json.dumps({SAMPLES_HEADER_KEY: SAMPLES_FORMAT, "settings": settings}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_samples_header(path: str | Path) -> tuple[dict | None, bool]:
    """``(the settings of the header or None, whether any sample line follows)`` of a samples file."""
    settings, lines = None, 0
    with open(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            if lines == 0 and is_samples_header(line):
                try:
                    settings = json.loads(line).get("settings") or {}
                except (ValueError, AttributeError):
                    raise RecoverlibError(f"{path}:1: a broken settings line") from None
                lines = 1
                continue
            return settings, True
    return settings, False


def append_samples(path: str | Path, rows, base: str | None = None) -> None:
    """Append ``[(row id, samples)]`` to a samples file (one JSON line per row and base) and flush it to disk.

    ``base``: the base model that served them, in a run with several (the line records it).
    """
    with open(path, "a") as fh:
        for row_id, samples in rows:
            line = {"id": row_id, **({"base": base} if base is not None else {}),
                    "samples": [{"adapter": s.adapter, "index": s.index, "text": s.text} for s in samples]}
            fh.write(json.dumps(line) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def mend_last_line(path: Path) -> None:
    """Drop a samples line torn by a crash (the file's end after its last newline), or end a whole one."""
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - (1 << 20)))  # lines are far shorter than 1 MiB; only the tail is read
        tail = fh.read()
        cut = tail.rfind(b"\n") + 1
        rest = tail[cut:]
        if not rest.strip():
            return
        try:
            json.loads(rest)["samples"]
        except (ValueError, KeyError, TypeError):
            log.warning(
                "%s: dropped a last line cut short by a crash (%d bytes); its row is sampled again",
                path,
                len(rest),
            )
            fh.truncate(size - len(rest))
        else:
            fh.write(b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def parse_sample_line(line: str, path: Path, n: int) -> tuple[str, str | None, tuple[Sample, ...]]:
    """``(id, base, samples)`` of one samples line; a malformed line is a one-line error naming it (line
    ``n``)."""
    try:
        rec = json.loads(line)
        base = rec.get("base")
        got = tuple(Sample(s["adapter"], int(s["index"]), str(s["text"]), base) for s in rec["samples"])
        return str(rec["id"]), base, got
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise RecoverlibError(f"{path}:{n}: not a samples line ({type(err).__name__}: {err})") from None


def iter_sample_lines(path: str | Path) -> Iterator[tuple[str, str | None, tuple[Sample, ...]]]:
    """``(id, base, samples)`` for each line of a samples file, read line by line."""
    path = Path(path)
    if not path.is_file():
        raise RecoverlibError(f"{path}: no such samples file")
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            if line.strip() and not (n == 1 and is_samples_header(line)):
                yield parse_sample_line(line, path, n)


def read_sample_lines(path: str | Path) -> list[tuple[str, str | None, tuple[Sample, ...]]]:
    """``[(id, base, samples)]``, one per line of a samples file; a malformed line is a one-line error naming
    it."""
    return list(iter_sample_lines(path))


def read_samples(path: str | Path) -> dict:
    """``id -> tuple of Sample`` from a samples file (a row's lines of several bases add up, in file
    order)."""
    out: dict = {}
    for row_id, _, samples in iter_sample_lines(path):
        out[row_id] = out.get(row_id, ()) + samples
    return out
