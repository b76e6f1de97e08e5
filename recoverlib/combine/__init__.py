"""Turning a row's samples into one recovered prompt. Strategies register by config type (see ``base``)."""

import importlib
import pkgutil

from recoverlib.combine.base import Sample, combine, register_strategy, round_robin
from recoverlib.combine.concat import ConcatConfig, concat_predictions

# Every strategy module registers itself on import: adding a strategy is adding a file.
for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["ConcatConfig", "Sample", "combine", "concat_predictions", "register_strategy", "round_robin"]
