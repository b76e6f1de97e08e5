"""Engines by name: each engine module registers its class with :func:`register_engine`."""

from __future__ import annotations

from recoverlib.registry import PackageRegistry

ENGINES = PackageRegistry("recoverlib.engines", "engine")
register_engine = ENGINES.register


def make_engine(name: str, model, adapters=None, config=None):
    """Build the engine registered as ``name`` (e.g. ``"vllm"``, ``"hf"``)."""
    return ENGINES.get(name)(model, adapters, config)
