"""Engines: the same interface over vLLM and transformers + PEFT (see :mod:`recoverlib.engines.base`)."""

from recoverlib.engines.base import AdapterInfo, Engine, EngineConfig, Samples, SamplingConfig, check_adapters
from recoverlib.engines.registry import ENGINES, make_engine, register_engine

__all__ = [
    "ENGINES",
    "AdapterInfo",
    "Engine",
    "EngineConfig",
    "SamplingConfig",
    "Samples",
    "check_adapters",
    "make_engine",
    "register_engine",
]
