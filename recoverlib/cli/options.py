"""Options several commands share, so one concept has one name and one default everywhere.

Names: ``--out`` for what a command writes, ``--samples-file`` for the samples JSONL, ``--samples`` for a
count, ``--embedder`` for the sentence embedder. Older spellings stay accepted for one release as hidden
aliases that warn (see :func:`old_name`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from recoverlib.metric import COMPETITION_EMBEDDER
from recoverlib.prompt import TEMPLATE_KINDS

log = logging.getLogger("recoverlib")


def old_name(parser: argparse.ArgumentParser, flag: str, new: str, dest: str, **kwargs) -> None:
    """Accept ``flag`` as a hidden, warning alias of ``new`` (same ``dest``); dropped in the next release."""

    class Alias(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            log.warning("%s is now %s; the old name goes in the next release", option_string, new)
            setattr(namespace, self.dest, True if self.nargs == 0 else values)

    parser.add_argument(flag, dest=dest, action=Alias, help=argparse.SUPPRESS, **kwargs)


def add_out(
    parser: argparse.ArgumentParser, help: str, required: bool = True, old: tuple[str, ...] = ()
) -> None:
    """``--out PATH``: what the command writes (older spellings in ``old`` kept as aliases)."""
    parser.add_argument(
        "--out", type=Path, required=False, default=None, help=help + (" (required)" if required else "")
    )
    for flag in old:
        old_name(parser, flag, "--out", "out", type=Path)
    parser.set_defaults(_required_out=required, _parser=parser)


def add_samples_file(parser: argparse.ArgumentParser, help: str, required: bool = True,
                     old: tuple[str, ...] = ("--samples",)) -> None:
    """``--samples-file PATH``: the samples JSONL (``predict --samples-file`` writes it)."""
    parser.add_argument(
        "--samples-file", type=Path, default=None, help=help + (" (required)" if required else "")
    )
    for flag in old:
        old_name(parser, flag, "--samples-file", "samples_file", type=Path)
    parser.set_defaults(_required_samples_file=required, _parser=parser)


def add_embedder(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--embedder",
        default=COMPETITION_EMBEDDER,
        help="sentence embedder: a name, a folder, or 'minilm' (offline; default %(default)s)",
    )


def add_template(parser: argparse.ArgumentParser) -> None:
    """``--template auto|chat|plain``: the recovery prompt's kind (plain for base models without a chat
    template)."""

    parser.add_argument(
        "--template",
        choices=TEMPLATE_KINDS,
        default="auto",
        help="recovery prompt: the tokenizer's chat template, plain text (base models), or auto:"
        " chat where the tokenizer has one (default); adapters keep the kind they were trained with",
    )


def check_required(args: argparse.Namespace) -> None:
    """Options that are required under either their new or their old name (argparse cannot say so itself)."""
    for dest, flag in (("out", "--out"), ("samples_file", "--samples-file")):
        if getattr(args, f"_required_{dest}", False) and getattr(args, dest, None) is None:
            args._parser.error(f"the following arguments are required: {flag}")
