"""``recoverlib quantize`` (a 16-bit Mixtral or dense base to a precision plan) and ``recoverlib inspect``
(audit a checkpoint, or say what an adapter targets and how each engine serves it)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recoverlib.cli.options import add_out, add_template
from recoverlib.engines.adapter_serving import inspect_adapter
from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import require_model_folder
from recoverlib.output_paths import check_output_folder
from recoverlib.quant.api import inspect_checkpoint, quantize
from recoverlib.quant.audit import check_plan
from recoverlib.quant.convert import publish_layout
from recoverlib.quant.meta import META_FILE
from recoverlib.quant.plan import PRESETS, PrecisionPlan


def add_commands(subparsers) -> None:
    """Register ``quantize`` and ``inspect`` (``plan`` lives in :mod:`recoverlib.cli.plan`)."""

    q = subparsers.add_parser(
        "quantize", help="quantize a Mixtral (experts included) or a dense base and audit it"
    )
    q.add_argument("--model", required=True, type=Path,
                   help="16-bit HF folder: Mixtral, Mistral, Llama, Qwen2 or Gemma")
    q.add_argument("--plan", required=True, help=f"preset ({', '.join(PRESETS)}) or a JSON plan file")
    add_out(q, "output folder")
    q.add_argument("--calibration", type=Path, default=None,
                   help="GPTQ calibration CSV (Kaggle rows or a 'text' column); default: built-in examples")
    q.add_argument("--seed", type=int, default=0, help="seed for choosing calibration texts")
    add_template(q)
    q.add_argument("--export-vllm", action=_Gone, help=argparse.SUPPRESS)
    q.add_argument(
        "--device", default="cpu", help="where layers are quantized: cpu, cuda or cuda:N (bnb, hqq)"
    )
    q.add_argument(
        "--max-shard-size", default="5GB", help="largest output shard (e.g. 5GB, 500MB); default 5GB"
    )
    q.add_argument("--quiet", action="store_true", help="no progress on stderr")
    q.set_defaults(func=cmd_quantize)

    c = subparsers.add_parser(
        "convert",
        help="rewrite an older GPTQ Mixtral checkpoint (mlp.experts.N.gate_proj names)"
        " in Mixtral's published layout, which vLLM loads; shard by shard",
    )
    c.add_argument("--model", required=True, type=Path, help="GPTQ Mixtral folder in GPTQModel's layout")
    add_out(c, "output folder")
    c.set_defaults(func=cmd_convert)

    i = subparsers.add_parser(
        "inspect",
        help="audit a checkpoint (bits, group size, params and bytes per module group), or say what a PEFT"
        " adapter targets and how each engine will serve it",
    )
    i.add_argument("path", type=Path, help="HF model folder (quantized or not), or a PEFT adapter folder")
    i.add_argument("--model", type=Path, default=None,
                   help="adapter only: the base to check its shapes against (default: its config's, if"
                   " local)")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.set_defaults(func=cmd_inspect)


def cmd_quantize(args: argparse.Namespace) -> int:
    require_model_folder(args.model)
    inputs = [("--model", args.model), ("--calibration", args.calibration)]
    check_output_folder(args.out, inputs, marker=META_FILE)
    quantize(args.model, args.plan, args.out, calibration=args.calibration, seed=args.seed,
                   progress=not args.quiet, device=args.device, max_shard_size=args.max_shard_size,
                   template=args.template)
    return 0


class _Gone(argparse.Action):
    """``--export-vllm``: quantize writes vLLM's layout itself now; said in one line instead of a silent
    no-op."""

    def __call__(self, parser, namespace, values, option_string=None):
        raise RecoverlibError(
            "--export-vllm is gone: `recoverlib quantize --plan gptq-*` writes Mixtral's published"
            " layout, which vLLM loads as it is (older checkpoints: `recoverlib convert`)"
        )


def cmd_convert(args: argparse.Namespace) -> int:
    require_model_folder(args.model)
    check_output_folder(args.out, [("--model", args.model)], marker="config.json")
    print(f"wrote {publish_layout(args.model, args.out)} (Mixtral's published layout)", file=args.stdout)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    if (args.path / "adapter_config.json").is_file():
        adapter = inspect_adapter(args.path, args.model)
        print(json.dumps(adapter.to_json(), indent=1) if args.json else adapter.table(), file=args.stdout)
        return 0
    if args.model is not None:
        raise RecoverlibError(f"--model is for adapters; {args.path} has no adapter_config.json")
    report = inspect_checkpoint(args.path, check=False)
    print(json.dumps(report.to_json(), indent=1) if args.json else report.table(), file=args.stdout)
    if report.plan_dict is not None:
        check_plan(report, PrecisionPlan.from_dict(report.plan_dict))  # after printing, so the table is seen
    return 0
