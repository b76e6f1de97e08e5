"""``predict``: a whole input through an executor into a submission; ``predict_rows``: rows through an engine
here.

For each base model in turn: the chunks still to sample are planned at fixed positions, an executor serves
them (in this process, or on a Ray cluster), and the driver records each finished chunk in input order. Then
every row's samples (all bases') are combined block by block and the submission is written, CSV or Parquet.
With a samples file, a run that stops keeps every finished chunk, and the same command with ``resume`` writes
the same bytes as a run that never stopped, whichever executor ran it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

from tqdm.auto import tqdm

from recoverlib.combine import CombineContext
from recoverlib.combine.base import needs_embeddings
from recoverlib.engines.base import Engine
from recoverlib.engines.registry import ENGINES, check_engine_name
from recoverlib.engines.vllm_support import choose_engine
from recoverlib.errors import RecoverlibError
from recoverlib.executors import EXECUTORS
from recoverlib.executors.base import EngineSpec, Executor, serve_in_order
from recoverlib.io import Row, is_parquet, read_rows, require_pyarrow
from recoverlib.output_paths import check_output_file
from recoverlib.pipeline.chunks import Chunk, plan_chunks
from recoverlib.pipeline.config import BaseModel, PredictConfig, Prediction
from recoverlib.pipeline.finish import finish_blocks, finish_rows, write_predictions
from recoverlib.pipeline.record import InOrder, SampleStore
from recoverlib.pipeline.run_settings import BaseRun, run_settings
from recoverlib.pipeline.sample import ChunkSampler, prompt_budget

log = logging.getLogger("recoverlib")


@dataclass(frozen=True)
class PredictSummary:
    """What ``predict`` wrote: the submission, its rows, and how many got the fallback prompt."""

    out: Path
    rows: int
    fallbacks: int


def predict_rows(engine: Engine, rows: Sequence[Row], config: PredictConfig | None = None, *,
                 samples_file: str | Path | None = None, resume: bool = False,
                 context: CombineContext | None = None) -> list[Prediction]:
    """Predict every row with ``engine`` (in this process); returns one :class:`Prediction` per row, in input
    order.

    ``context``: embedder and caches for combination strategies that embed (default: the competition's
    embedder, loaded only if the strategy needs it).
    """
    config = config or PredictConfig()
    # before the samples file is touched: a template mismatch is one line
    sampler = ChunkSampler(engine, config)
    chunk_rows = config.chunk_rows or engine.chunk_rows
    settings = run_settings(config, [BaseRun(
        engine.name, getattr(engine, "model_path", None) or getattr(engine, "model", ""),
        {name: a.path for name, a in engine.adapters.items()}, getattr(engine, "config", None), chunk_rows,
    )]) if samples_file else None
    store = SampleStore(samples_file, [r.id for r in rows], resume, settings)
    chunks = plan_chunks(rows, chunk_rows, store.done(None))
    record(store, None, chunks, serve_in_order(sampler, chunks))
    return finish_rows(rows, store.samples_of([r.id for r in rows]), config, context or CombineContext())


def record(store: SampleStore, base: str | None, chunks: Sequence[Chunk], finished) -> None:
    """Append the rows of each finished chunk not yet sampled for ``base``, in input order (early chunks
    held)."""
    done = store.done(base) if store.path else set()
    todo = sum(r.id not in done for c in chunks for r in c.rows)
    order = InOrder(chunks)
    label = "rows" if base is None else f"rows ({base})"
    # closed (a newline) on errors too
    with tqdm(total=todo, desc=label, unit="row", disable=not todo) as bar:
        for chunk, got in finished:
            for ready, samples in order.add(chunk, got):
                rows = [(r.id, samples[r.id]) for r in ready.rows if r.id not in done and r.id in samples]
                store.append(rows, base)  # a row that failed alone is not recorded: --resume tries it again
                bar.update(len(rows))


def predict(model: str | Path | Sequence[BaseModel], input_path: str | Path, out: str | Path, *,
            adapters: Mapping[str, str | Path] | None = None, engine: str = "auto",
            config: PredictConfig | None = None, engine_config=None,
            samples_file: str | Path | None = None, resume: bool = False,
            context: CombineContext | None = None, executor: str | Executor = "local", executor_config=None,
            close_engine: bool = True) -> PredictSummary:
    """One call for a whole input (Kaggle CSV or Parquet): read rows, sample every base through ``executor``,
    combine, write the submission (CSV or Parquet, by ``out``'s suffix).

    ``model``: a model folder (with ``adapters``), or several :class:`BaseModel` (each with its adapters),
    served one after another (one engine per worker at a time); every row's samples of all bases are combined
    together, and the samples file records each sample's base (``resume`` continues across bases).
    ``executor``: a registered name (``local``, ``ray``, with ``executor_config``, that executor's settings)
    or an :class:`Executor`. ``close_engine=False`` leaves the executor's last engine to the end of the
    process: for a caller about to exit (the CLI), since vLLM's shutdown spends about 1.3 s in garbage
    collection on 2 cores.
    """
    config = config or PredictConfig()
    check_engine_name(engine)  # an unknown name fails here, before anything is read or loaded
    runner = EXECUTORS.get(executor)(executor_config) if isinstance(executor, str) else executor
    if getattr(engine_config, "max_model_len", None) is not None:
        prompt_budget(engine_config.max_model_len, config.sampling.max_new_tokens)
    bases = _bases(model, adapters)
    if is_parquet(out) or is_parquet(input_path):
        require_pyarrow()  # before hours of sampling, not when the submission is written
    check_output_file(out, [("the input", input_path), ("the samples file", samples_file)])
    if samples_file is not None:
        check_output_file(samples_file, [("the input", input_path)])
    rows = read_rows(input_path)
    context = context or CombineContext()
    if needs_embeddings(config.combination):  # an embedder that cannot load fails now, not after sampling
        context.get_scorer().model  # noqa: B018 (loads it)
    specs = [(base, _spec(engine, base, engine_config, config, rows)) for base in bases]
    chunk_rows = {base.name: config.chunk_rows or runner.chunk_rows(spec) for base, spec in specs}
    settings = run_settings(config, [
        BaseRun(spec.engine, spec.model, spec.adapters, spec.config, chunk_rows[base.name], base.name)
        for base, spec in specs
    ]) if samples_file else None
    store = SampleStore(samples_file, [r.id for r in rows], resume, settings)
    try:
        for base, spec in specs:
            chunks = plan_chunks(rows, chunk_rows[base.name], store.done(base.name))
            if chunks:
                record(store, base.name, chunks, runner.run(spec, chunks, config, base.name))
    except BaseException:
        runner.close()  # workers, a local Ray, engine processes: not left to a process that exits at once
        raise
    if close_engine:
        runner.close()
    written, fallbacks = write_predictions(out, finish_blocks(rows, store, config, context))
    return PredictSummary(Path(out), written, fallbacks)


def _spec(
    engine: str, base: BaseModel, engine_config, config: PredictConfig, rows: Sequence[Row]
) -> EngineSpec:
    """The engine a base is served by (``auto`` settled here, said once) with the run's workload hint."""
    name = choose_engine(engine, [base.path])
    engine_config = engine_config or ENGINES.get(name).config_type()
    if "expected_new_tokens" in {f.name for f in fields(engine_config)}:
        servable = sum(r.problem is None for r in rows)
        per_adapter = config.sampling.samples * config.sampling.max_new_tokens * servable
        engine_config = replace(engine_config,
                                expected_new_tokens=per_adapter * (len(base.adapters) + config.include_base))
    return EngineSpec(name, base.path, dict(base.adapters), engine_config)


def _bases(model, adapters) -> list[BaseModel]:
    """The run's bases: one unnamed base from a folder, or several named ones (checked: distinct names)."""
    if isinstance(model, (str, Path)):
        return [BaseModel(Path(model), dict(adapters or {}))]
    bases = list(model)
    if adapters:
        raise RecoverlibError(
            "with several base models, give each its adapters (BaseModel.adapters), not adapters="
        )
    names = [b.name for b in bases]
    if not bases or (len(bases) > 1 and (None in names or len(set(names)) != len(names))):
        raise RecoverlibError(f"several base models need distinct names (got {names})")
    return bases
