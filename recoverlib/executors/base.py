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


class EngineSampler:
    """Serves chunks (as :class:`ChunkSampler`) with an engine built from ``spec`` on first use, and built
    again after every ``predict.recycle_rows`` rows: what each executor's worker holds.

    A new engine serves a row exactly as the old one would (rows are seeded by input position), so recycling
    changes memory, never samples.
    """

    def __init__(self, spec: EngineSpec, predict: PredictConfig, base: str | None):
        self.spec, self.predict, self.base = spec, predict, base
        self._sampler: ChunkSampler | None = None
        self._rows = 0  # served by the current engine

    def start(self) -> EngineSampler:
        """Build the engine now (a bad setting fails here, before any chunk)."""
        if self._sampler is None:
            self._sampler = ChunkSampler(self.spec.build(), self.predict, self.base)
            self._rows = 0
        return self

    def __call__(self, chunk: Chunk) -> Samples:
        samples = self.start()._sampler(chunk)
        self._rows += len(chunk.rows)
        if self.predict.recycle_rows and self._rows >= self.predict.recycle_rows:
            self.close()  # the next chunk builds a fresh engine
        return samples

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler, sampler = None, self._sampler
            sampler.engine.close()


def serve_in_order(sampler, chunks: Sequence[Chunk]) -> Iterator[tuple[Chunk, Samples]]:
    """Each chunk through ``sampler`` (a :class:`ChunkSampler` or :class:`EngineSampler`), one after
    another."""
    for chunk in chunks:
        yield chunk, sampler(chunk)
