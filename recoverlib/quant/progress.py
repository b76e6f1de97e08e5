"""The record of a streaming quantize: ``OUT.partial/progress.json``, what makes a killed run resumable.

It holds the run's fingerprint (its arguments, the source files' sizes, a digest of the calibration texts) and
each finished piece (name -> file bytes) or stage (name -> {file: bytes}). A rerun with the same fingerprint
trusts the finished entries whose files are still there with their recorded sizes; other arguments are
refused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from recoverlib.errors import RecoverlibError

PROGRESS_FILE = "progress.json"


class RunRecord:
    """``work/progress.json``: the fingerprint and the finished pieces or stages (see the module
    docstring)."""

    def __init__(self, work: Path, fingerprint: dict, done: dict[str, int | dict[str, int]]):
        self.work, self.fingerprint, self.done = work, fingerprint, done

    @classmethod
    def open(cls, work: Path, fingerprint: dict) -> RunRecord:
        """The record of an interrupted run with this fingerprint, or a new empty ``work`` folder."""
        file = work / PROGRESS_FILE
        if file.is_file():
            saved = json.loads(file.read_text())
            if saved.get("fingerprint") != json.loads(json.dumps(fingerprint)):
                raise RecoverlibError(
                    f"{work} holds an interrupted quantize with other arguments; remove it to start again"
                )
            record = cls(work, fingerprint, {})
            record.done = {p: n for p, n in saved["done"].items() if record._intact(p, n)}
            return record
        if work.exists():
            shutil.rmtree(work)  # no record: nothing in it can be trusted
        work.mkdir(parents=True)
        record = cls(work, fingerprint, {})
        record.save()
        return record

    def file(self, piece: str) -> Path:
        """Where a finished piece is written (``work/parts/<piece>.safetensors``)."""
        return self.work / "parts" / f"{piece}.safetensors"

    def mark(self, piece: str) -> None:
        """Record ``piece`` as finished (its file is written)."""
        self.done[piece] = self.file(piece).stat().st_size
        self.save()

    def mark_folder(self, name: str, folder: Path) -> None:
        """Record a finished stage whose output is ``folder`` (under ``work``): its files and their sizes."""
        self.done[name] = {
            str(f.relative_to(self.work)): f.stat().st_size for f in sorted(folder.iterdir()) if f.is_file()
        }
        self.save()

    def _intact(self, name: str, recorded) -> bool:
        """A piece file, or every file of a stage, still there with the recorded size."""
        files = (
            recorded
            if isinstance(recorded, dict)
            else {str(self.file(name).relative_to(self.work)): recorded}
        )
        return all(
            (self.work / f).is_file() and (self.work / f).stat().st_size == n for f, n in files.items()
        )

    def save(self) -> None:
        """Write the record atomically."""
        tmp = self.work / (PROGRESS_FILE + ".tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "done": self.done}, indent=1) + "\n")
        os.replace(tmp, self.work / PROGRESS_FILE)
