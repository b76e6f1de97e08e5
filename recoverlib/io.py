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
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from recoverlib.errors import RecoverlibError

log = logging.getLogger("recoverlib")

INPUT_COLUMNS = ("id", "original_text", "rewritten_text")
TRUTH_COLUMNS = ("id", "rewrite_prompt")


@dataclass(frozen=True)
class Row:
    """One Kaggle row. ``problem`` is set (and the texts may be empty) when the row cannot be served."""

    id: str
    original_text: str
    rewritten_text: str
    rewrite_prompt: str | None = None
    problem: str | None = None


def read_csv(path: str | Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """Read a CSV as strings (ids stay as written) and check the required columns exist, once."""
    path = Path(path)
    if not path.is_file():
        raise RecoverlibError(f"{path}: no such file")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise RecoverlibError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
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
    frame = read_csv(path, columns)
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
    frame = read_csv(path, TRUTH_COLUMNS)
    empty = frame["id"][frame["rewrite_prompt"].isna()]
    if len(empty):
        raise RecoverlibError(f"{path}: empty rewrite_prompt for id(s) {', '.join(map(str, empty[:5]))}")
    return dict(zip(frame["id"].astype(str), frame["rewrite_prompt"], strict=True))


def write_submission(path: str | Path, ids: list[str], prompts: list[str]) -> Path:
    """Write ``id, rewrite_prompt`` atomically: the file is either the old one or the complete new one."""
    if len(ids) != len(prompts):
        raise ValueError(f"{len(ids)} ids but {len(prompts)} prompts")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"id": ids, "rewrite_prompt": prompts})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            frame.to_csv(fh, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# -- the samples file: JSONL, one line per row, {"id": ..., "samples": [{"adapter", "index", "text"}, ...]} -----


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
            log.warning("%s: dropped a last line cut short by a crash (%d bytes); its row is sampled again", path, len(rest))
            fh.truncate(size - len(rest))
        else:
            fh.write(b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_sample_lines(path: str | Path) -> list[tuple[str, str | None, tuple]]:
    """``[(id, base, samples)]``, one per line of a samples file; a malformed line is a one-line error naming it."""
    from recoverlib.combine.base import Sample

    path = Path(path)
    if not path.is_file():
        raise RecoverlibError(f"{path}: no such samples file")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            base = rec.get("base")
            got = tuple(Sample(s["adapter"], int(s["index"]), str(s["text"]), base) for s in rec["samples"])
            out.append((str(rec["id"]), base, got))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise RecoverlibError(f"{path}:{n}: not a samples line ({type(err).__name__}: {err})") from None
    return out


def read_samples(path: str | Path) -> dict:
    """``id -> tuple of Sample`` from a samples file (a row's lines of several bases add up, in file order)."""
    out: dict = {}
    for row_id, _, samples in read_sample_lines(path):
        out[row_id] = out.get(row_id, ()) + samples
    return out


def resume_samples(path: str | Path, ids, base: str | None = None) -> dict:
    """The samples ``base`` already made in ``path`` for a run over ``ids`` ({} when the file does not exist yet).

    A last line without its newline was cut by a crash: it is dropped from the file (a warning says so) and its
    row is sampled again. A complete last line that only lacks the newline gets it, so appends stay whole lines.
    """
    if not Path(path).is_file():
        return {}
    mend_last_line(Path(path))
    got = {row_id: samples for row_id, b, samples in read_sample_lines(path) if b == base}
    stray = set(got) - set(ids)
    if stray:
        raise RecoverlibError(f"{path}: samples for ids not in the input ({', '.join(sorted(stray)[:3])}); not resuming")
    log.info("resuming: %d of %d rows already sampled in %s", len(got), len(ids), path)
    return got
