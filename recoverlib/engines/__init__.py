"""Engines: one interface over vLLM (in-process), an OpenAI-compatible server and transformers + PEFT
(see :mod:`recoverlib.engines.base`); found by name through :mod:`recoverlib.engines.registry`.

Names load on first use.
"""

from recoverlib.lazy import lazy_exports

_EXPORTS = {
    "ENGINE_PRESETS": "base",
    "LORA_MODES": "base",
    "Engine": "base",
    "EngineConfig": "base",
    "LocalEngine": "base",
    "SamplingConfig": "base",
    "Samples": "base",
    "engine_config_with": "base",
    "ENGINES": "registry",
    "make_engine": "registry",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
