"""The executor interface: serve chunks with engines built from an :class:`EngineSpec`, report them as they
finish.

An executor never sees models, only engines it builds where it runs them (in this process, or in each worker
of a cluster) from a picklable :class:`EngineSpec`; it never writes the samples file (the driver records what
it yields, in input order). Its settings are its own config dataclass (:attr:`Executor.config_type`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from recoverlib.engines.registry import ENGINES, make_engine
from recoverlib.pipeline.chunks import Chunk
from recoverlib.pipeline.config import PredictConfig
from recoverlib.pipeline.sample import ChunkSampler, Samples


@dataclass(frozen=True)
class EngineSpec:
    """How to build one engine anywhere: its registry name (never ``auto``), model, adapters and config."""

    engine: str
    model: str | Path
    adapters: Mapping[str, str | Path] = field(default_factory=dict)
    config: object = None  # the engine's own config dataclass (None: its defaults)

    def build(self):
        """The engine (an expensive call: it loads the model)."""
        return make_engine(self.engine, self.model, dict(self.adapters), self.config)


@dataclass(frozen=True)
class LocalConfig:
    """The local executor has no settings."""


class Executor(ABC):
    """Serves chunks (see the module docstring). Registered by :attr:`name` in :mod:`recoverlib.executors`."""

    name: ClassVar[str]
    config_type: ClassVar[type] = LocalConfig

    def __init__(self, config=None):
        self.config = config or self.config_type()

    @abstractmethod
    def run(self, spec: EngineSpec, chunks: Sequence[Chunk], predict: PredictConfig,
            base: str | None) -> Iterator[tuple[Chunk, Samples]]:
        """Serve every chunk with engines built from ``spec`` (samples labelled ``base``); yield
        ``(chunk, samples)`` as each finishes, in any order, each chunk exactly once."""

    def chunk_rows(self, spec: EngineSpec) -> int:
        """Rows per chunk when the run does not say: the engine's own choice."""
        return ENGINES.get(spec.engine).chunk_rows

    @abstractmethod
    def close(self) -> None:
        """Release what the executor holds (workers, engines)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def serve_in_order(sampler: ChunkSampler, chunks: Sequence[Chunk]) -> Iterator[tuple[Chunk, Samples]]:
    """Each chunk through ``sampler``, one after another."""
    for chunk in chunks:
        yield chunk, sampler(chunk)
