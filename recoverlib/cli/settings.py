"""Command-line options made from settings dataclasses (:func:`recoverlib.settings.setting` fields).

Every option defaults to ``None`` (unset), so a preset's value or the dataclass default holds unless the
option is given; :func:`settings_from_args` builds the dataclass from what was given.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import fields


def flag_of(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def cli_fields(config_type) -> list:
    return [f for f in fields(config_type) if f.metadata.get("cli")]


def _scalar(annotation):
    """``int`` from ``int | None`` (and the like); None for a type the command line does not take."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return args[0] if len(args) == 1 else None
    return annotation if annotation in (int, float, str, bool) else None


def add_settings(parser: argparse.ArgumentParser, config_type, seen: set[str] | None = None,
                 group: str | None = None) -> None:
    """One option per command-line field of ``config_type``; flags already in ``seen`` are skipped
    (shared)."""
    seen = set() if seen is None else seen
    hints = typing.get_type_hints(config_type)
    target = parser.add_argument_group(group) if group else parser
    for f in cli_fields(config_type):
        flag = flag_of(f)
        if flag in seen:
            continue
        seen.add(flag)
        kind = _scalar(hints[f.name])
        default = "" if f.default is None or f.default is f.default_factory else f" (default {f.default})"
        kwargs = {"dest": f.name, "default": None, "help": f.metadata["help"] + default}
        if kind is bool:
            target.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            target.add_argument(flag, type=kind, choices=f.metadata.get("choices"), **kwargs)


def given(args: argparse.Namespace, config_type) -> dict:
    """The command-line fields of ``config_type`` that were given (not None)."""
    return {
        f.name: getattr(args, f.name)
        for f in cli_fields(config_type)
        if getattr(args, f.name, None) is not None
    }


def settings_from_args(args: argparse.Namespace, config_type, **base):
    """``config_type`` from ``base`` values (e.g. a preset's) with the given options on top."""
    return config_type(**{**base, **given(args, config_type)})
