"""The data path for a whole input, split by concern (names load on first use):

- :mod:`~recoverlib.pipeline.config`: what to sample and how to combine it (:class:`PredictConfig`), the
  result of a row (:class:`Prediction`), a run's base models (:class:`BaseModel`);
- :mod:`~recoverlib.pipeline.chunks`: rows cut into chunks at fixed input positions, each row seeded by its
  position, so any executor and any resume serves a row the same way;
- :mod:`~recoverlib.pipeline.sample`: one chunk through one engine (prompts rendered and fitted, generated,
  cleaned; a row that fails alone costs that row only): what a worker runs;
- :mod:`~recoverlib.pipeline.record`: the samples file, appended in input order as chunks finish (early ones
  buffered), and resume;
- :mod:`~recoverlib.pipeline.finish`: samples combined into one prompt per row, streamed block by block;
- :mod:`~recoverlib.pipeline.run`: ``predict`` (a whole input through an executor) and ``predict_rows`` (rows
  through an engine in this process).

Where chunks run is an executor's business (:mod:`recoverlib.executors`: this process, or a Ray cluster).
"""

from recoverlib.lazy import lazy_exports

_EXPORTS = {
    "PredictConfig": "config", "Prediction": "config", "BaseModel": "config", "DEFAULT_FALLBACK": "config",
    "PredictSummary": "run", "predict": "run", "predict_rows": "run",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
