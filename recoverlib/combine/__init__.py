"""Turning a row's samples into one recovered prompt. Strategies register by config type (see ``base``)."""

import importlib
import pkgutil

from recoverlib.combine.base import (
    Draft,
    Part,
    Sample,
    combine,
    combine_rows,
    register_strategy,
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

# Every strategy module registers itself on import: adding a strategy is adding a file.
for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = [
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
    "register_strategy",
    "round_robin",
    "save_combination",
    "strategies",
]
