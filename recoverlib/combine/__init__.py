"""Turning a row's samples into one recovered prompt: one file per strategy, a config dataclass each, found
through one registry (:data:`~recoverlib.combine.base.STRATEGIES`). Names load on first use."""

from recoverlib.lazy import lazy_exports

_EXPORTS = {
    "STRATEGIES": "base",
    "Draft": "base",
    "Part": "base",
    "Sample": "base",
    "Strategy": "base",
    "combine": "base",
    "combine_rows": "base",
    "round_robin": "base",
    "strategies": "base",
    "BudgetConfig": "budget",
    "ConcatConfig": "concat",
    "concat_predictions": "concat",
    "config_from_dict": "configio",
    "config_to_dict": "configio",
    "load_combination": "configio",
    "save_combination": "configio",
    "CombineContext": "context",
    "EmbeddingConfig": "embedding",
    "EmbeddingSearchConfig": "embedding_search",
    "FirstConfig": "first",
    "MbrConfig": "mbr",
    "MeanPromptConfig": "mean_prompt",
    "MedoidConfig": "medoid",
    "PipelineConfig": "pipeline",
    "SuffixConfig": "suffix",
    "VerifierConfig": "verifier",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
