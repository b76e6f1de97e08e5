"""The command line: parse, call the library, print. No logic of its own; one module per command group.

A :class:`RecoverlibError` is printed as one line (``recoverlib: error: ...``) with exit status 2. A command's
stdout holds its output only: while it runs, what libraries print goes to stderr, and their logs stay at
warnings unless ``-v``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import warnings

from recoverlib.cli.options import check_required
from recoverlib.errors import RecoverlibError
from recoverlib.runtime import environ, relaunch_with_allocator, uses_cpu_vllm

log = logging.getLogger("recoverlib")

# Libraries whose warnings are noise to a user of a command (optional kernels that fail to load, torch's
# pytree deprecations, datasets' notes): behind -v.
NOISY_LOGGERS = ("torchao", "bitsandbytes", "torch.utils._pytree", "datasets", "vllm")
# Command groups in the order ``--help`` lists them; each module has ``add_commands(subparsers)``.
COMMAND_GROUPS = ("predict", "serve", "tiny", "training", "quant", "plan", "combine")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recoverlib", description="Recover the prompt an LLM rewrote a text with."
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show info logs (ours and the libraries')"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        importlib.import_module(f"{__name__}.{group}").add_commands(sub)
    return parser


class _OneLine(logging.Formatter):
    def format(self, record):
        return f"recoverlib: {record.levelname.lower()}: {record.getMessage()}"


@contextlib.contextmanager
def _quiet_libraries(verbose: bool):
    """Library prints to stderr, vLLM's logs to stderr at warning level and optional-kernel warnings off
    (unless ``verbose``); all put back after. Yields the real stdout, which is where a command writes its
    output.
    """
    stdout = sys.stdout
    # vLLM's start-up warnings (tcmalloc, NUMA, thread binding, Triton) repeat for every engine: errors only,
    # unless -v; datasets' map bars (training's tokenization) too: the commands' own progress bars stay.
    env = {"VLLM_LOGGING_STREAM": "ext://sys.stderr", "VLLM_LOGGING_LEVEL": "INFO" if verbose else "ERROR"}
    if not verbose:
        env["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    loggers = {name: logging.getLogger(name) for name in NOISY_LOGGERS}
    levels = {name: lg.level for name, lg in loggers.items()}
    if not verbose:
        for lg in loggers.values():
            lg.setLevel(logging.ERROR)
    try:
        with environ(**env), contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            if not verbose:  # vLLM's deprecation notices about torch, at every engine start
                warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm\.")
            yield stdout
    finally:
        for name, lg in loggers.items():
            lg.setLevel(levels[name])


def main(argv: list[str] | None = None, process_exits: bool = False) -> int:
    """Run one command; ``process_exits``: the process ends right after, so engines need not be shut down."""

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    saved = log.level, log.propagate
    log.addHandler(handler)  # before parsing: an old option name is warned about while parsing
    log.setLevel(logging.WARNING)
    log.propagate = False
    try:
        args = build_parser().parse_args(argv)
        check_required(args)
        args.process_exits = process_exits
        if args.verbose:
            log.setLevel(logging.INFO)
        with _quiet_libraries(args.verbose) as args.stdout:
            return args.func(args)
    except RecoverlibError as err:
        print(f"recoverlib: error: {err}", file=sys.stderr)
        return 2
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


# Commands that run vLLM in their own process: on its CPU build they run with the allocator and OpenMP runtime
# vLLM asks for. ``serve`` runs no model itself (its server process gets them in its environment).
VLLM_COMMANDS = ("predict",)


def run() -> None:
    """Console entry point: :func:`main`, then exit without tearing the interpreter down.

    ``predict`` on vLLM's CPU build first relaunches itself with tcmalloc and libiomp5
    preloaded (:func:`recoverlib.runtime.relaunch_with_allocator`; ``RECOVERLIB_PRELOAD=0`` turns it off).

    With vLLM and torch loaded, interpreter finalization took about 2 s after the work was done, and shutting
    the vLLM engine down about 1.3 s more (measured on the 2-core CPU); the exit releases all of it at once.
    By then every output file is closed; stdio and logging are flushed before the exit.
    """
    argv = sys.argv[1:]
    if next((a for a in argv if not a.startswith("-")), None) in VLLM_COMMANDS and uses_cpu_vllm():
        relaunch_with_allocator([sys.executable, "-m", "recoverlib.cli", *argv])
    code = main(argv, process_exits=True)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
