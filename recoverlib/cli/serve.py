"""``recoverlib serve``: vLLM's OpenAI-compatible server for a model and its adapters (see
:mod:`recoverlib.serve`)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from recoverlib.cli.predict import adapter_arg, add_engine_options, engine_config, parse_adapters
from recoverlib.cli.settings import add_settings, settings_from_args
from recoverlib.errors import RecoverlibError
from recoverlib.serve import ServeConfig, VllmServer

# Handled: the server is stopped in order. Whatever ends this process otherwise (SIGKILL, the OOM killer)
# ends the server too (its parent-death signal, recoverlib.owned_process).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def cmd_serve(args) -> int:
    server = VllmServer(args.model, parse_adapters(args.adapter or []), engine_config(args, "vllm"),
                        settings_from_args(args, ServeConfig))

    stopped = []

    def stop(signum, _frame):
        # Only signal here (the main thread is inside the server's wait): SIGTERM to the server's process
        # group, SIGKILL if asked again; the wait below returns once the server is gone.
        server.signal(signal.SIGTERM if not stopped else signal.SIGKILL)
        stopped.append(signum)

    before = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        return _serve(server, args, stopped)
    finally:
        server.stop()
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _serve(server: VllmServer, args, stopped: list) -> int:
    try:
        server.start()
    except RecoverlibError:
        if stopped:  # asked to stop while the server was starting: not an error
            return 0
        raise
    names = ", ".join(sorted(parse_adapters(args.adapter or []))) or "none"
    print(
        f"serving {args.model} at {server.url} (adapters: {names}); Ctrl-C stops it",
        file=args.stdout,
        flush=True,
    )
    code = server.wait()
    if stopped:
        return 0
    print(f"recoverlib: error: vLLM's server exited by itself ({code})", file=sys.stderr)
    return 1


def add_commands(sub) -> None:
    """Register ``serve``."""

    p = sub.add_parser("serve", help="vLLM's OpenAI-compatible server for a model and its LoRA adapters")
    p.add_argument(
        "--model", required=True, type=Path, help="HF model folder (16-bit, or GPTQ from recoverlib quantize)"
    )
    p.add_argument("--adapter", action="append", type=adapter_arg, metavar="NAME=PATH",
                   help="a PEFT LoRA folder, served under NAME (repeat for several)")
    add_settings(p, ServeConfig)
    add_engine_options(p, local_only=True)
    p.set_defaults(func=cmd_serve)
