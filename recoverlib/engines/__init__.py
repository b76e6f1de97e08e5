"""Engines: the same interface over vLLM and transformers + PEFT (see :mod:`recoverlib.engines.base`)."""

from recoverlib.adapters import AdapterInfo, check_adapters
from recoverlib.engines.base import (
    ENGINE_PRESETS,
    LORA_MODES,
    Engine,
    EngineConfig,
    Samples,
    SamplingConfig,
    engine_config_with,
)
from recoverlib.engines.registry import ENGINES, make_engine

__all__ = [
    "ENGINES",
    "ENGINE_PRESETS",
    "LORA_MODES",
    "AdapterInfo",
    "Engine",
    "EngineConfig",
    "SamplingConfig",
    "Samples",
    "check_adapters",
    "engine_config_with",
    "make_engine",
]
