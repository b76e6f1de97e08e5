"""``recoverlib quantize`` (a 16-bit Mixtral to a precision plan) and ``recoverlib inspect`` (audit a checkpoint)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recoverlib.cli.options import add_out


def add_commands(subparsers) -> None:
    """Register ``quantize`` and ``inspect`` (``plan`` lives in :mod:`recoverlib.cli.plan`)."""
    from recoverlib.quant.plan import PRESETS

    q = subparsers.add_parser("quantize", help="quantize a Mixtral checkpoint (experts included) and audit it")
    q.add_argument("--model", required=True, type=Path, help="16-bit HF Mixtral folder")
    q.add_argument("--plan", required=True, help=f"preset ({', '.join(PRESETS)}) or a JSON plan file")
    add_out(q, "output folder")
    q.add_argument("--calibration", type=Path, default=None,
                   help="GPTQ calibration CSV (Kaggle rows or a 'text' column); default: built-in examples")
    q.add_argument("--seed", type=int, default=0, help="seed for choosing calibration texts")
    q.add_argument("--export-vllm", type=Path, default=None, help="gptq only: also write a vLLM-layout copy here")
    q.add_argument("--device", default="cpu", help="where layers are quantized: cpu, cuda or cuda:N (bnb, hqq)")
    q.add_argument("--max-shard-size", default="5GB", help="largest output shard (e.g. 5GB, 500MB); default 5GB")
    q.add_argument("--quiet", action="store_true", help="no progress on stderr")
    q.set_defaults(func=cmd_quantize)

    i = subparsers.add_parser("inspect", help="audit a checkpoint: bits, group size, params and bytes per module group")
    i.add_argument("path", type=Path, help="HF model folder (quantized or not)")
    i.add_argument("--json", action="store_true", help="print the audit as JSON")
    i.set_defaults(func=cmd_inspect)


def cmd_quantize(args: argparse.Namespace) -> int:
    from recoverlib.model_folder import require_model_folder
    from recoverlib.output_paths import check_output_folder
    from recoverlib.quant.api import META_FILE, quantize

    require_model_folder(args.model)
    inputs = [("--model", args.model), ("--calibration", args.calibration)]
    check_output_folder(args.out, inputs, marker=META_FILE)
    if args.export_vllm:
        check_output_folder(args.export_vllm, [*inputs, ("--out", args.out)], marker="config.json")
    out = quantize(args.model, args.plan, args.out, calibration=args.calibration, seed=args.seed,
                   progress=not args.quiet, device=args.device, max_shard_size=args.max_shard_size)
    if args.export_vllm:
        from recoverlib.quant.export import export_vllm

        print(f"vLLM layout: {export_vllm(out, args.export_vllm)}", file=args.stdout)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from recoverlib.quant.api import inspect_checkpoint
    from recoverlib.quant.audit import check_plan
    from recoverlib.quant.plan import PrecisionPlan

    report = inspect_checkpoint(args.path, check=False)
    print(json.dumps(report.to_json(), indent=1) if args.json else report.table(), file=args.stdout)
    if report.plan_dict is not None:
        check_plan(report, PrecisionPlan.from_dict(report.plan_dict))  # after printing, so the table is seen
    return 0
