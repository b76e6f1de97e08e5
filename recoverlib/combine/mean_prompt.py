"""``mean-prompt``: add a prompt that scores well against every truth of the task (made by
``optimize-prompt``).

It pulls the embedding toward the centre of the task's prompts: a hedge against the predictions being wrong.
Placement follows the public solutions: append, prepend, or insert the predictions after word ``k`` of the
mean prompt (3rd place), and with ``only_new_words`` add only the mean prompt's words the predictions lack.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from recoverlib.combine.base import MEAN, Draft, Part, Sample, Strategy, default_draft
from recoverlib.errors import RecoverlibError

MODES = ("append", "prepend", "insert")


def read_text_file(path: str | Path, what: str) -> str:
    """The stripped text of a prompt file (mean prompt or suffix); missing or empty is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise RecoverlibError(f"{what}: no such file {path}")
    text = " ".join(path.read_text().split())
    if not text:
        raise RecoverlibError(f"{what}: {path} is empty")
    return text


@dataclass(frozen=True)
class MeanPromptConfig:
    """The mean prompt by ``text`` or by ``path`` (a file from ``optimize-prompt``; read once, here).

    ``mode``: ``append`` | ``prepend`` | ``insert`` (predictions go after word ``k`` of the mean prompt).
    """

    strategy: ClassVar[str] = "mean-prompt"  # its name in JSON configs and the registry

    text: str | None = None
    path: str | None = None
    mode: str = "append"
    k: int = 3
    only_new_words: bool = True
    resolved: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self):
        if (self.text is None) == (self.path is None):
            raise RecoverlibError("mean-prompt: give exactly one of 'text' and 'path'")
        if self.mode not in MODES:
            raise RecoverlibError(f"mean-prompt: mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        if self.k < 0:
            raise RecoverlibError(f"mean-prompt: k must be >= 0 (got {self.k})")
        text = (
            " ".join(self.text.split()) if self.text is not None else read_text_file(self.path, "mean-prompt")
        )
        if not text:
            raise RecoverlibError("mean-prompt: the text is empty")
        object.__setattr__(self, "resolved", text)  # frozen: set once, after validation


def _key(word: str) -> str:
    return re.sub(r"\W+", "", word.lower())


def add_mean_prompt(draft: Draft, config: MeanPromptConfig) -> Draft:
    """``draft`` with the mean prompt placed by ``config.mode``; an empty draft becomes the whole mean
    prompt."""
    words = config.resolved.split()
    if not draft.text:
        return draft.replace([Part(config.resolved, MEAN)])
    keep = [True] * len(words)
    if config.only_new_words:
        present = {_key(w) for w in draft.text.split()}
        keep = [_key(w) not in present for w in words]

    def piece(lo: int, hi: int | None) -> Part:
        return Part(" ".join(w for w, k in zip(words[lo:hi], keep[lo:hi], strict=True) if k), MEAN)

    if config.mode == "append":
        parts = [*draft.parts, piece(0, None)]
    elif config.mode == "prepend":
        parts = [piece(0, None), *draft.parts]
    else:
        parts = [piece(0, config.k), *draft.parts, piece(config.k, None)]
    return draft.replace([p for p in parts if p.text])


def _mean_prompt(config: MeanPromptConfig, samples: Sequence[Sample], ctx, draft) -> Draft:
    return add_mean_prompt(draft if draft is not None else default_draft(samples), config)


STRATEGY = Strategy(MeanPromptConfig, _mean_prompt)
