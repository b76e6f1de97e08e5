"""What a run's samples depend on, as recorded in the samples file's first line, and the first difference
between two runs' records.

``--resume`` continues a samples file only with the settings it was written with: the sampling settings
(samples, temperature, top-p, max new tokens, seed), the recovery template, whether the base is sampled, and
per base model the fingerprints of the model and adapter folders (config, weights, tokenizer and chat
template: :func:`~recoverlib.model_folder.folder_fingerprint`) and what the engine adds
(:meth:`~recoverlib.engines.base.Engine.samples_kind`: vLLM's samples do not depend on chunking, the HF
engine's and a server's seeded ones do). What only changes the submission (the combination, the fallback
prompt) is not recorded: a resume may change it. The record lives in the samples file, so every executor and
engine transport gets the same check.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from recoverlib.engines.registry import ENGINES
from recoverlib.model_folder import folder_fingerprint
from recoverlib.pipeline.config import PredictConfig

PRINT_CHARS = 16  # of a sha256: enough to tell folders apart, short enough to read in an error line


@dataclass(frozen=True)
class BaseRun:
    """One base model of a run as its samples depend on it: the engine (a registered name) and its config,
    the model and adapters, and the rows per chunk."""

    engine: str
    model: str | Path
    adapters: Mapping[str, str | Path] = field(default_factory=dict)
    config: object = None
    chunk_rows: int = 1
    name: str | None = None


def fingerprint_of(path: str | Path, full: bool) -> str:
    """A folder's fingerprint; a name that is no folder here (a model or adapter a server serves) stands
    for itself."""
    folder = Path(path)
    if folder.is_dir():
        return "sha256:" + folder_fingerprint(folder, full)[:PRINT_CHARS]
    return f"served as {path}"


def run_settings(config: PredictConfig, bases: Sequence[BaseRun]) -> dict[str, object]:
    """The settings a run's samples depend on, one readable name each (JSON: what the samples file's first
    line records)."""
    s = config.sampling
    out: dict[str, object] = {
        "samples": s.samples,
        "temperature": s.temperature,
        "top p": s.top_p,
        "max new tokens": s.max_new_tokens,
        "seed": s.seed,
        "ignore eos": s.ignore_eos,
        **{f"template {k.replace('_', ' ')}": v for k, v in dataclasses.asdict(config.template).items()},
        "include base": config.include_base,
    }
    for b in bases:
        of = f" (base {b.name})" if b.name else ""
        out[f"model{of}"] = fingerprint_of(b.model, full=False)
        for name, path in sorted(b.adapters.items()):
            out[f"adapter {name}{of}"] = fingerprint_of(path, full=True)
        out[f"engine{of}"] = ENGINES.get(b.engine).samples_kind(b.config, s, b.chunk_rows)
    return json.loads(json.dumps(out))  # as read back from the file


def first_difference(written: Mapping, now: Mapping) -> tuple[str, object, object] | None:
    """``(setting, written value, this run's value)`` of the first setting that differs (None: the same);
    a setting one side lacks is ``None`` there."""
    for label in [*now, *(k for k in written if k not in now)]:
        if written.get(label) != now.get(label):
            return label, written.get(label), now.get(label)
    return None
