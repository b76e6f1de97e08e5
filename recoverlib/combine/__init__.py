"""Turning a row's samples into one recovered prompt. Strategies register by config type (see ``base``)."""

from recoverlib.combine.base import (
    STRATEGIES,
    Draft,
    Part,
    Sample,
    Strategy,
    combine,
    combine_rows,
    round_robin,
    strategies,
)
from recoverlib.combine.budget import BudgetConfig
from recoverlib.combine.concat import ConcatConfig, concat_predictions
from recoverlib.combine.configio import config_from_dict, config_to_dict, load_combination, save_combination
from recoverlib.combine.context import CombineContext
from recoverlib.combine.first import FirstConfig
from recoverlib.combine.mbr import MbrConfig
from recoverlib.combine.mean_prompt import MeanPromptConfig
from recoverlib.combine.medoid import MedoidConfig
from recoverlib.combine.pipeline import PipelineConfig
from recoverlib.combine.suffix import SuffixConfig

__all__ = [
    "STRATEGIES",
    "Strategy",
    "BudgetConfig",
    "CombineContext",
    "ConcatConfig",
    "Draft",
    "FirstConfig",
    "MbrConfig",
    "MeanPromptConfig",
    "MedoidConfig",
    "Part",
    "PipelineConfig",
    "Sample",
    "SuffixConfig",
    "combine",
    "combine_rows",
    "concat_predictions",
    "config_from_dict",
    "config_to_dict",
    "load_combination",
    "round_robin",
    "save_combination",
    "strategies",
]
