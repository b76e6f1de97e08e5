"""``recoverlib make-tiny``: the tiny Mixtral, its tokenizer and LoRA adapters, made here (random or
trained)."""

from __future__ import annotations

import argparse
from pathlib import Path

from recoverlib.cli.options import add_out
from recoverlib.errors import RecoverlibError
from recoverlib.output_paths import check_output_folder
from recoverlib.tiny import make_tiny, make_trained_tiny
from recoverlib.tiny.model import TINY_FAMILIES
from recoverlib.tiny.trained import STAMP


def out_folder(args) -> Path:
    """``--out``, or the positional folder older releases took (warned)."""
    import logging

    if args.out_dir is not None and args.out is not None:
        raise RecoverlibError(f"{args.command}: give the output folder once, as --out")
    if args.out_dir is not None:
        logging.getLogger("recoverlib").warning(
            "a positional output folder is now --out; it goes in the next release"
        )
        return args.out_dir
    if args.out is None:
        raise RecoverlibError(f"{args.command}: give the output folder: --out FOLDER")
    return args.out


def cmd_make_tiny(args) -> int:
    if args.trained and args.family != "mixtral":
        raise RecoverlibError(f"--trained makes the tiny Mixtral only (not --family {args.family})")
    check_output_folder(out_folder(args), [], marker=STAMP if args.trained else "tiny.json")
    if args.trained:
        out = make_trained_tiny(out_folder(args), adapters=args.adapters, seed=args.seed)
    else:
        out = make_tiny(out_folder(args), adapters=args.adapters, seed=args.seed, family=args.family)
    print(f"tiny model: {out / 'model'}", file=args.stdout)
    for p in sorted((out / "adapters").glob("*")):
        print(f"adapter {p.name}: {p}", file=args.stdout)
    return 0


def add_positional_out(p: argparse.ArgumentParser) -> None:
    """``--out FOLDER``; the positional folder of older releases is still read (hidden)."""
    add_out(p, "output folder", required=False)
    p.add_argument("out_dir", nargs="?", type=Path, help=argparse.SUPPRESS)
    p.set_defaults(_required_out=False)


def add_commands(sub) -> None:
    """Register ``make-tiny``."""
    p = sub.add_parser(
        "make-tiny", help="write a tiny Mixtral (or a dense base), its tokenizer and LoRA adapters"
    )
    add_positional_out(p)
    p.add_argument("--adapters", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--family", choices=TINY_FAMILIES, default="mixtral",
                   help="mixtral, or a dense base of the same widths (default %(default)s)")
    p.add_argument("--trained", action="store_true",
                   help="train the base on the synthetic task, then the adapters (minutes; cached)")
    p.set_defaults(func=cmd_make_tiny)
