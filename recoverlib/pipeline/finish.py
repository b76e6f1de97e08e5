"""Samples into one recovered prompt per row, streamed block by block into the submission.

Combining runs over a block of rows at a time (strategies that embed batch their model calls per block),
reading the block's samples of every base from the run's :class:`~recoverlib.pipeline.record.SampleStore`;
the block's prompts go straight into the submission, so the driver never holds every row's samples. A row
that cannot be served (empty text), whose generation failed, or whose samples were all empty gets the
fallback prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence

from tqdm.auto import tqdm

from recoverlib.combine import CombineContext, Sample, combine_rows
from recoverlib.io import Row, SubmissionWriter
from recoverlib.pipeline.config import PredictConfig, Prediction
from recoverlib.pipeline.record import SampleStore

log = logging.getLogger("recoverlib")
BLOCK_ROWS = 4096  # rows combined together: large enough to batch the embedder, small enough to bound memory


def finish_rows(rows: Sequence[Row], samples: Mapping[str, Sequence[Sample]], config: PredictConfig,
                context: CombineContext | None = None, progress: bool = True) -> list[Prediction]:
    """One :class:`Prediction` per row from its samples (all bases'), combined across the rows at once so
    embedding strategies batch their model calls; rows that cannot be served get the fallback."""
    served = {row.id: tuple(samples.get(row.id, ())) for row in rows if not row.problem}
    prompts = combine_rows(served, config.combination, context or CombineContext(), progress=progress)
    return [_finish(row, samples.get(row.id, ()), prompts.get(row.id, ""), config) for row in rows]


def finish_blocks(rows: Sequence[Row], store: SampleStore, config: PredictConfig, context: CombineContext,
                  block: int = BLOCK_ROWS) -> Iterator[Prediction]:
    """Every row's :class:`Prediction`, in input order, combined block by block from ``store``."""
    with tqdm(total=len(rows), desc="combine", unit="row", disable=len(rows) <= block) as bar:
        for start in range(0, len(rows), block):
            part = rows[start : start + block]
            yield from finish_rows(
                part, store.samples_of([r.id for r in part]), config, context, progress=False
            )
            context.forget()
            bar.update(len(part))


def write_predictions(path, predictions: Iterator[Prediction], block: int = BLOCK_ROWS) -> tuple[int, int]:
    """Write the submission (CSV or Parquet) from ``predictions`` as they come; returns (rows, fallbacks)."""
    rows = fallbacks = 0
    ids, prompts = [], []
    with SubmissionWriter(path) as out:
        for pred in predictions:
            ids.append(pred.id)
            prompts.append(pred.prompt)
            fallbacks += pred.fallback is not None
            if len(ids) >= block:
                out.write(ids, prompts)
                rows, ids, prompts = rows + len(ids), [], []
        out.write(ids, prompts)
    return rows + len(ids), fallbacks


def _finish(row: Row, samples: Sequence[Sample], prompt: str, config: PredictConfig) -> Prediction:
    if row.problem:
        return Prediction(row.id, config.fallback_prompt, (), fallback=row.problem)
    prompt = prompt.strip()
    if not samples:  # its generation failed (warned then)
        return Prediction(row.id, config.fallback_prompt, (), fallback="generation failed")
    if not prompt:
        log.warning("row id=%s: every sample was empty after cleaning; it gets the fallback prompt", row.id)
        return Prediction(row.id, config.fallback_prompt, tuple(samples), fallback="empty samples")
    return Prediction(row.id, prompt, tuple(samples))
