"""Name registries filled by the modules of one package: adding an engine or a backend is adding a file."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from recoverlib.errors import RecoverlibError


class PackageRegistry:
    """Name -> registered object; on first lookup every module of ``package`` is imported, which registers them.

    ``make`` turns a decorated class into what is stored (the class itself, or an instance).
    """

    def __init__(self, package: str, kind: str, make: Callable[[type], object] = lambda cls: cls):
        self._package, self._kind, self._make = package, kind, make
        self._items: dict[str, object] = {}
        self._scanned = False

    def register(self, name: str):
        def wrap(cls):
            cls.name = name
            self._items[name] = self._make(cls)
            return cls

        return wrap

    def _scan(self) -> None:
        if not self._scanned:
            pkg = importlib.import_module(self._package)
            for mod in pkgutil.iter_modules(pkg.__path__):
                importlib.import_module(f"{self._package}.{mod.name}")
            self._scanned = True

    def names(self) -> list[str]:
        self._scan()
        return sorted(self._items)

    def get(self, name: str):
        self._scan()
        if name not in self._items:
            raise RecoverlibError(f"unknown {self._kind} {name!r}; choose one of {', '.join(self.names())}")
        return self._items[name]

    def all(self) -> list:
        self._scan()
        return list(self._items.values())
