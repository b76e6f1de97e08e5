"""The one cache root every entry point shares (library, CLI, demo, benchmarks): one trained tiny model per
machine.

``$RECOVERLIB_CACHE`` when set and not empty, else ``~/.cache/recoverlib``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache root folder (not created here)."""
    return Path(os.environ.get("RECOVERLIB_CACHE") or Path.home() / ".cache" / "recoverlib")


def cache_dir(*parts: str) -> Path:
    """A folder under the cache root, e.g. ``cache_dir("merged")``."""
    return cache_root().joinpath(*parts)
