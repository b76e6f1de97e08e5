"""The local executor: every chunk in this process, through one engine (the default; today's behaviour)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from recoverlib.executors.base import EngineSpec, Executor, serve_in_order
from recoverlib.pipeline.chunks import Chunk
from recoverlib.pipeline.config import PredictConfig
from recoverlib.pipeline.sample import ChunkSampler, Samples


class LocalExecutor(Executor):
    """One engine in this process for each run; it stays until the next run or :meth:`close` (one engine in
    memory at a time). A caller about to exit may skip ``close``: vLLM's shutdown spends about 1.3 s
    collecting garbage on a 2-core CPU, and the process's end releases everything at once."""

    name = "local"

    def __init__(self, config=None):
        super().__init__(config)
        self._engine = None

    def run(self, spec: EngineSpec, chunks: Sequence[Chunk], predict: PredictConfig,
            base: str | None) -> Iterator[tuple[Chunk, Samples]]:
        self.close()
        self._engine = spec.build()
        yield from serve_in_order(ChunkSampler(self._engine, predict, base), chunks)

    def close(self) -> None:
        if self._engine is not None:
            self._engine, engine = None, self._engine
            engine.close()
