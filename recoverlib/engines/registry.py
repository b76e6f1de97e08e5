"""Engines by name, through one registry (entry point group ``recoverlib.engines``): an engine is one file."""

from __future__ import annotations

from recoverlib.engines.vllm_support import choose_engine
from recoverlib.registry import Registry

ENGINES = Registry("engine", "recoverlib.engines", {
    "vllm": "recoverlib.engines.vllm:VLLMEngine",
    "hf": "recoverlib.engines.hf:HFEngine",
    "openai": "recoverlib.engines.openai:OpenAIEngine",
})
AUTO = "auto"  # not an engine: vLLM where it can serve the model here, else hf (engines/vllm_support.py)


def check_engine_name(name: str) -> None:
    """Refuse an unknown engine name in one line (``auto`` included among the known)."""
    if name != AUTO:
        ENGINES.get(name)


def make_engine(name: str, model, adapters=None, config=None):
    """Build the engine registered as ``name`` (``"vllm"``, ``"hf"``), or for ``"auto"`` the one
    :func:`~recoverlib.engines.vllm_support.choose_engine` picks for ``model`` (said on stderr)."""
    return ENGINES.get(choose_engine(name, [model]))(model, adapters, config)
