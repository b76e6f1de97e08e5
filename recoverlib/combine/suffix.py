"""``suffix``: append a searched string of tokens (the 1st place's "lucrarea" trick).

The string is found by ``recoverlib search-suffix`` against the chosen embedder (tokens whose addition pulls
predictions toward their truths); nothing is hard-coded, since a string tuned for one embedder means nothing
to another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from recoverlib.combine.base import SUFFIX, Draft, Part, Sample, Strategy, default_draft
from recoverlib.combine.mean_prompt import read_text_file
from recoverlib.errors import RecoverlibError


@dataclass(frozen=True)
class SuffixConfig:
    """The suffix by ``text`` or ``path`` (a file from ``search-suffix``), appended ``repeat`` times."""

    strategy: ClassVar[str] = "suffix"  # its name in JSON configs and the registry

    text: str | None = None
    path: str | None = None
    repeat: int = 1
    resolved: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self):
        if (self.text is None) == (self.path is None):
            raise RecoverlibError("suffix: give exactly one of 'text' and 'path'")
        if self.repeat < 1:
            raise RecoverlibError(f"suffix: repeat must be >= 1 (got {self.repeat})")
        text = " ".join(self.text.split()) if self.text is not None else read_text_file(self.path, "suffix")
        if not text:
            raise RecoverlibError("suffix: the text is empty")
        object.__setattr__(self, "resolved", " ".join([text] * self.repeat))


def add_suffix(draft: Draft, config: SuffixConfig) -> Draft:
    """``draft`` with the suffix as its last part (an empty draft stays empty: a suffix alone says
    nothing)."""
    if not draft.text:
        return draft
    return draft.replace([*draft.parts, Part(config.resolved, SUFFIX)])


def _suffix(config: SuffixConfig, samples: Sequence[Sample], ctx, draft) -> Draft:
    return add_suffix(draft if draft is not None else default_draft(samples), config)


STRATEGY = Strategy(SuffixConfig, _suffix)
