"""Registries of extension points (engines, executors, quantization backends, combination strategies).

One mechanism for all of them, after vLLM's lazy registries and plugins: a registry maps a name to a
``"module:attribute"`` reference and imports that module only when the name is looked up. recoverlib's own
entries are a table in the module that owns the registry; any installed distribution adds more under the
registry's entry point group, without editing recoverlib::

    # pyproject.toml of another package
    [project.entry-points."recoverlib.engines"]
    mine = "my_package.engine:MyEngine"

A name recoverlib already has is not replaced by an entry point (warned once); an entry that cannot be
imported is a one-line error naming it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points

from recoverlib.errors import RecoverlibError

log = logging.getLogger("recoverlib")


def _same(obj):
    return obj


class Registry:
    """``name -> object`` for one kind of extension point, loaded lazily (see the module docstring).

    ``make`` turns the imported attribute into what :meth:`get` returns (e.g. an instance of a backend class);
    it runs once per name.
    """

    def __init__(self, kind: str, group: str, builtin: Mapping[str, str], make: Callable = _same):
        self.kind, self.group = kind, group
        self._builtin = dict(builtin)
        self._make = make
        self._loaded: dict[str, object] = {}
        self._warned: set[str] = set()

    def references(self) -> dict[str, str]:
        """``name -> "module:attribute"``: recoverlib's own, then the entry points of installed
        distributions."""
        refs = dict(self._builtin)
        for ep in entry_points(group=self.group):
            if ep.name in refs:
                if refs[ep.name] != ep.value and ep.name not in self._warned:
                    self._warned.add(ep.name)
                    log.warning(
                        "%s %r: entry point %s ignored (recoverlib's own is %s)",
                        self.kind,
                        ep.name,
                        ep.value,
                        refs[ep.name],
                    )
                continue
            refs[ep.name] = ep.value
        return refs

    def names(self) -> list[str]:
        """Every registered name (nothing is imported)."""
        return sorted(self.references())

    def get(self, name: str):
        """The object registered as ``name``, imported on first use; an unknown name is a one-line error."""
        if name in self._loaded:
            return self._loaded[name]
        refs = self.references()
        if name not in refs:
            raise RecoverlibError(f"unknown {self.kind} {name!r}; choose one of {', '.join(sorted(refs))}")
        module, _, attr = refs[name].partition(":")
        try:
            found = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise RecoverlibError(f"{self.kind} {name!r} ({refs[name]}) cannot be loaded: {err}") from None
        self._loaded[name] = self._make(found)
        return self._loaded[name]

    def all(self) -> list:
        """Every registered object (each imported)."""
        return [self.get(n) for n in self.names()]
