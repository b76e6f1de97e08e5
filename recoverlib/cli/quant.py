"""``recoverlib quantize`` (a 16-bit Mixtral to a precision plan) and ``recoverlib inspect`` (audit a checkpoint)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recoverlib.cli.options import add_out


def add_commands(subparsers) -> None:
    """Register ``quantize`` and ``inspect``."""
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

    p = subparsers.add_parser("plan", help="weights and peak quantize memory of a plan, from config.json alone")
    p.add_argument("model", help="HF model folder or config.json (or 'mixtral-8x7b' for the public config)")
    p.add_argument("--plan", required=True, help="preset or JSON plan file")
    p.add_argument("--device", default="cpu", help="where layers would be quantized: cpu or cuda")
    p.add_argument("--max-shard-size", default="5GB", help="output shard size the quantize would use")
    p.add_argument("--host-memory", default=None, help="RAM available, e.g. 29GB: say whether the quantize fits")
    p.add_argument("--device-memory", default=None, help="GPU memory available, e.g. 15GB")
    p.set_defaults(func=cmd_plan)

    i = subparsers.add_parser("inspect", help="audit a checkpoint: bits, group size, params and bytes per module group")
    i.add_argument("path", type=Path, help="HF model folder (quantized or not)")
    i.add_argument("--json", action="store_true", help="print the audit as JSON")
    i.set_defaults(func=cmd_inspect)


def cmd_quantize(args: argparse.Namespace) -> int:
    from recoverlib.quant.api import quantize

    out = quantize(args.model, args.plan, args.out, calibration=args.calibration, seed=args.seed,
                   progress=not args.quiet, device=args.device, max_shard_size=args.max_shard_size)
    if args.export_vllm:
        from recoverlib.quant.export import export_vllm

        print(f"vLLM layout: {export_vllm(out, args.export_vllm)}", file=args.stdout)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Print weights, peak quantize memory and whether it fits; exit 1 when it does not fit."""
    from recoverlib.quant.checkpoint import parse_size
    from recoverlib.quant.plan import load_plan
    from recoverlib.quant.planner import MIXTRAL_8X7B, quantize_peak, read_config

    config = MIXTRAL_8X7B if args.model.lower() == "mixtral-8x7b" else read_config(args.model)
    plan = load_plan(args.plan)
    device = "cpu" if args.device == "cpu" else "cuda"
    peak = quantize_peak(config, plan, device, parse_size(args.max_shard_size))
    lines = [f"plan {plan.name} ({plan.backend}) on {device}, {config.get('num_hidden_layers')} layers",
             f"weights (quantized)      {peak.weights_bytes / 1e9:9.2f} GB",
             f"one layer 16-bit         {peak.piece_16bit / 1e9:9.2f} GB, quantized {peak.piece_quantized / 1e9:.2f} GB",
             f"peak host (quantize)     {peak.host_bytes / 1e9:9.2f} GB"]
    if device != "cpu":
        lines.append(f"peak device (quantize)   {peak.device_bytes / 1e9:9.2f} GB")
    fits = True
    for label, given, need in (("host", args.host_memory, peak.host_bytes), ("device", args.device_memory, peak.device_bytes)):
        if given is not None:
            ok = need <= parse_size(given)
            fits &= ok
            lines.append(f"{label} memory {given}: {'fits' if ok else 'does NOT fit'}")
    print("\n".join(lines), file=args.stdout)
    return 0 if fits else 1


def cmd_inspect(args: argparse.Namespace) -> int:
    from recoverlib.quant.api import inspect_checkpoint
    from recoverlib.quant.audit import check_plan
    from recoverlib.quant.plan import PrecisionPlan

    report = inspect_checkpoint(args.path, check=False)
    print(json.dumps(report.to_json(), indent=1) if args.json else report.table(), file=args.stdout)
    if report.plan_dict is not None:
        check_plan(report, PrecisionPlan.from_dict(report.plan_dict))  # after printing, so the table is seen
    return 0
