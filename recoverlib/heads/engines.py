"""Where a head's base runs: a head engine holds one base model and serves any number of heads' LoRAs on it,
returning the last token's final hidden state per input (what the linear head reads).

Engines by name, through one registry (entry point group ``recoverlib.head_engines``), one file each:
``hf`` (transformers + PEFT, the reference, what training uses) and ``vllm`` (vLLM's pooling runner with the
head's LoRA per request: last-token pooling, no normalisation). A run's heads on the same base share one
engine (:func:`recoverlib.heads.cache.loaded`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from recoverlib.registry import Registry

HEAD_ENGINES = Registry("head engine", "recoverlib.head_engines", {
    "hf": "recoverlib.heads.hf_engine:HFHeadEngine",
    "vllm": "recoverlib.heads.vllm_engine:VLLMHeadEngine",
})
DEFAULT_HEAD_ENGINE = "hf"


class HeadEngine(Protocol):
    """One base model serving heads' LoRAs (see the module docstring)."""

    name: str
    base: Path

    def add(self, name: str, folder: Path, max_length: int) -> None:
        """Serve the head LoRA in ``folder`` as ``name`` (inputs up to ``max_length`` tokens)."""

    def last_hidden(self, name: str, inputs: Sequence[Sequence[int]]) -> np.ndarray:
        """(len(inputs), hidden) float32: each input's last-token final hidden state with head ``name``'s
        LoRA applied."""

    def close(self) -> None:
        """Free the engine (a later call may start it again)."""


def make_head_engine(name: str, base: str | Path) -> HeadEngine:
    """The head engine registered as ``name`` on the base model folder ``base``."""
    return HEAD_ENGINES.get(name)(Path(base))
