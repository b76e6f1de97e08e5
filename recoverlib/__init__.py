"""recoverlib: recover the prompt an LLM rewrote a text with.

The flat API: engines (``make_engine``, ``VLLMEngine``, ``HFEngine``), the recovery template, combination,
the metric and ``predict`` for a whole CSV. Heavy libraries (vLLM, transformers, quantizers) load only when used.
"""

# Note: the package ``recoverlib.combine`` keeps its name here (its function is ``recoverlib.combine.combine``).
from recoverlib.combine import (
    CombineContext,
    ConcatConfig,
    Sample,
    combine_rows,
    concat_predictions,
    load_combination,
)
from recoverlib.engines import EngineConfig, SamplingConfig, make_engine
from recoverlib.errors import RecoverlibError
from recoverlib.io import read_rows, read_truth, write_submission
from recoverlib.metric import Scorer
from recoverlib.predict import PredictConfig, Prediction, predict, predict_rows
from recoverlib.prompt import RecoveryTemplate, clean_prediction
from recoverlib.tiny import make_tiny

__all__ = [
    "CombineContext",
    "ConcatConfig",
    "EngineConfig",
    "PredictConfig",
    "Prediction",
    "RecoverlibError",
    "RecoveryTemplate",
    "Sample",
    "SamplingConfig",
    "Scorer",
    "clean_prediction",
    "combine_rows",
    "concat_predictions",
    "load_combination",
    "make_engine",
    "make_tiny",
    "predict",
    "predict_rows",
    "read_rows",
    "read_truth",
    "write_submission",
]
