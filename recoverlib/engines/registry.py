"""Engines by name: each engine module registers its class with :func:`register_engine`."""

from __future__ import annotations

import importlib
import pkgutil

from recoverlib.errors import RecoverlibError


class EngineRegistry:
    """Name -> engine class. Engine modules are light to import (heavy libraries load in ``__init__``)."""

    def __init__(self):
        self._engines: dict[str, type] = {}
        self._scanned = False

    def register(self, name: str):
        def wrap(cls):
            cls.name = name
            self._engines[name] = cls
            return cls

        return wrap

    def _scan(self) -> None:
        # Importing every module of the package registers its engines: adding an engine is adding a file.
        if not self._scanned:
            import recoverlib.engines as pkg

            for mod in pkgutil.iter_modules(pkg.__path__):
                importlib.import_module(f"{pkg.__name__}.{mod.name}")
            self._scanned = True

    def names(self) -> list[str]:
        self._scan()
        return sorted(self._engines)

    def get(self, name: str) -> type:
        self._scan()
        if name not in self._engines:
            raise RecoverlibError(f"unknown engine {name!r}; choose one of {', '.join(sorted(self._engines))}")
        return self._engines[name]


ENGINES = EngineRegistry()
register_engine = ENGINES.register


def make_engine(name: str, model, adapters=None, config=None):
    """Build the engine registered as ``name`` (e.g. ``"vllm"``, ``"hf"``)."""
    return ENGINES.get(name)(model, adapters, config)
