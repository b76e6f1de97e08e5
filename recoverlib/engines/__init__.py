"""Engines: the same interface over vLLM and transformers + PEFT (see :mod:`recoverlib.engines.base`)."""

from recoverlib.adapters import AdapterInfo, check_adapters
from recoverlib.engines.base import LORA_MODES, Engine, EngineConfig, Samples, SamplingConfig
from recoverlib.engines.registry import ENGINES, make_engine, register_engine

__all__ = [
    "ENGINES",
    "LORA_MODES",
    "AdapterInfo",
    "Engine",
    "EngineConfig",
    "SamplingConfig",
    "Samples",
    "check_adapters",
    "make_engine",
    "register_engine",
]
