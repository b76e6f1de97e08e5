"""The one cache root every entry point shares (library, CLI, demo, benchmarks): one trained tiny model per
machine; and the fingerprints that key what is cached there.

``$RECOVERLIB_CACHE`` when set and not empty, else ``~/.cache/recoverlib``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_SAMPLE = 1 << 20


def cache_root() -> Path:
    """The cache root folder (not created here)."""
    return Path(os.environ.get("RECOVERLIB_CACHE") or Path.home() / ".cache" / "recoverlib")


def cache_dir(*parts: str) -> Path:
    """A folder under the cache root, e.g. ``cache_dir("merged")``."""
    return cache_root().joinpath(*parts)


def fingerprint(folder: Path, full: bool) -> str:
    """sha256 over a folder's config and weight files.

    ``full``: every byte (adapters are small). Otherwise name, size, safetensors header and 1 MiB samples at
    the start, middle and end of each file, so a 90 GB base is fingerprinted in milliseconds.
    """
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.suffix in (".json", ".safetensors") and p.is_file())
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.name}:{size}".encode())
        with open(p, "rb") as fh:
            if full or size <= 3 * _SAMPLE:
                h.update(fh.read())
                continue
            for offset in (0, size // 2, size - _SAMPLE):
                fh.seek(offset)
                h.update(fh.read(_SAMPLE))
    return h.hexdigest()
