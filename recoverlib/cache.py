"""The one cache root every entry point shares (library, CLI, demo, benchmarks): one trained tiny model per
machine; and the fingerprints that key what is cached there.

``$RECOVERLIB_CACHE`` when set and not empty, else ``~/.cache/recoverlib``.
"""

from __future__ import annotations

import os
from pathlib import Path

from recoverlib.model_folder import folder_fingerprint


def cache_root() -> Path:
    """The cache root folder (not created here)."""
    return Path(os.environ.get("RECOVERLIB_CACHE") or Path.home() / ".cache" / "recoverlib")


def cache_dir(*parts: str) -> Path:
    """A folder under the cache root, e.g. ``cache_dir("merged")``."""
    return cache_root().joinpath(*parts)


def fingerprint(folder: Path, full: bool) -> str:
    """sha256 over a folder's config and weight files (``.json``, ``.safetensors``: what a merge or a
    conversion reads); :func:`recoverlib.model_folder.folder_fingerprint` says how."""
    return folder_fingerprint(folder, full, (".json", ".safetensors"))
