"""What a prediction run samples and how it combines, what it returns per row, and its base models."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from recoverlib.combine import ConcatConfig, Sample
from recoverlib.engines.base import SamplingConfig
from recoverlib.errors import RecoverlibError
from recoverlib.prompt import RecoveryTemplate

# A public mean prompt worth about 0.63 on the competition's test set on its own (a public Kaggle notebook).
DEFAULT_FALLBACK = ("Please improve this text using the writing style with maintaining the original meaning"
                    " but altering the tone.")


@dataclass(frozen=True)
class PredictConfig:
    """What to sample and how to combine it. Defaults follow the seed (4 samples, temperature 0.7, top_p
    0.95)."""

    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(samples=4))
    include_base: bool = False  # also sample the base model (it is always sampled when there are no adapters)
    fallback_prompt: str = DEFAULT_FALLBACK
    chunk_rows: int | None = None  # rows per generate call (None: the engine's choice, Engine.chunk_rows)
    combination: object = field(default_factory=ConcatConfig)
    template: RecoveryTemplate = field(default_factory=RecoveryTemplate)

    def __post_init__(self):
        if not self.fallback_prompt.strip():
            raise RecoverlibError("the fallback prompt must not be empty")
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise RecoverlibError(f"chunk_rows must be >= 1 (got {self.chunk_rows})")


@dataclass(frozen=True)
class Prediction:
    """One row's result: the combined prompt, the samples it came from, and why a fallback was used (if
    so)."""

    id: str
    prompt: str
    samples: tuple[Sample, ...]
    fallback: str | None = None


@dataclass(frozen=True)
class BaseModel:
    """One base model of a run and the adapters it serves. ``name`` labels its samples; a run with several
    bases needs distinct names (the 1st place combined Mistral and Gemma adapters; each base is served in
    turn)."""

    path: Path
    adapters: Mapping[str, str | Path] = field(default_factory=dict)
    name: str | None = None
