"""Where a command may write: never over one of its inputs, never into a folder holding something else.

The policy, the same for every command (checked before any work starts):

- An output *file* (submission, samples JSONL, combination JSON, text) must not be any input: paths are
  compared resolved, and with ``os.path.samefile`` where both exist, so a symlink or hard link to the input is
  refused too. An existing output file that is not an input is replaced atomically (the old one stays until
  the new is whole).
- An output *folder* (make-tiny, make-task, train, quantize) must not be an input, hold one, or lie inside an
  input folder. If it exists and is not empty it must be this command's own earlier output (it holds the
  command's marker file); then it is written again. Any other non-empty folder is refused: nothing of the
  user's is mixed with or replaced by an output.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from recoverlib.errors import RecoverlibError


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one file: equal resolved paths, or ``os.path.samefile`` (links) when both
    exist."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output_file(out: str | Path, inputs: Iterable[tuple[str, str | Path | None]]) -> None:
    """Refuse an output file that is one of ``inputs`` (``[(option name, path)]``; None paths are skipped)."""
    out = Path(out)
    if out.is_dir():
        raise RecoverlibError(f"output {out} is a folder; name a file")
    for name, path in inputs:
        if path is not None and same_file(out, path):
            raise RecoverlibError(f"output {out} is the same file as {name} {path}; nothing was written")


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_folder(out: str | Path, inputs: Iterable[tuple[str, str | Path | None]],
                        marker: str | tuple[str, ...] = ()) -> None:
    """Refuse an output folder that overlaps an input, or that holds files but none of this command's
    ``marker``.

    ``marker``: path(s) relative to ``out`` that only this command writes (its own earlier output may be
    redone).
    """
    markers = (marker,) if isinstance(marker, str) else marker
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RecoverlibError(f"output {out} is a file; name a folder")
    target = out.resolve()
    for name, path in inputs:
        if path is None:
            continue
        src = Path(path).resolve()
        if _inside(src, target) or _inside(target, src) or same_file(out, path):
            raise RecoverlibError(f"output folder {out} overlaps {name} {path}; choose another folder")
    if out.is_dir() and any(out.iterdir()) and not any((out / m).exists() for m in markers):
        raise RecoverlibError(
            f"output folder {out} is not empty and is not an earlier output of this command; choose a new "
            "or empty folder"
        )
