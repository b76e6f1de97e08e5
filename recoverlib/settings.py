"""Settings dataclasses the command line exposes by themselves: each field says its option's help (and flag).

An engine's or executor's config is a frozen dataclass whose fields are made with :func:`setting`; the CLI
adds one option per field (:mod:`recoverlib.cli.settings`), so a new engine or executor brings its options
with it and no command lists fields by hand.
"""

from __future__ import annotations

from dataclasses import MISSING, field


def setting(default=MISSING, *, help: str, flag: str | None = None, choices: tuple | None = None,  # noqa: A002
            cli: bool = True, default_factory=MISSING):
    """A dataclass field with its command-line option: ``--field-name`` (or ``flag``), ``help``, ``choices``;
    ``cli=False`` keeps it off the command line (Python only)."""
    meta = {"help": help, "flag": flag, "choices": choices, "cli": cli}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)
