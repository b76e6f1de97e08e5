"""``recoverlib plan``: will a model, quantized by a plan, fit where it is meant to run?

This module holds the serving part (vLLM on GPUs, :mod:`recoverlib.engines.memory`): ``--gpus`` and the engine
settings. The quantization part (peak host/device memory while quantizing) joins the same command:
:func:`serving_lines` returns the serving report's lines so both parts print from one ``cmd_plan``.
"""

from __future__ import annotations

import argparse

PUBLIC_CONFIGS = ("mixtral-8x7b",)  # names accepted instead of a folder or config.json


def _model_config(text: str):
    from recoverlib.quant.planner import MIXTRAL_8X7B

    return dict(MIXTRAL_8X7B) if text.lower() == "mixtral-8x7b" else text


def add_serving_options(p: argparse.ArgumentParser) -> None:
    """The serving planner's options; unset ones come from ``--preset``, then the planner's defaults."""
    from recoverlib.engines import ENGINE_PRESETS
    from recoverlib.engines.memory import ATTENTION_TARGETS, ServingSetup

    d = ServingSetup()
    p.add_argument("--gpus", help="GPUs as COUNTxSIZE, e.g. 2x15GB (default: vLLM on this CPU)")
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="CPU only: vLLM's KV-cache space per rank")
    p.add_argument("--preset", choices=sorted(ENGINE_PRESETS), help="engine settings of a known machine")
    p.add_argument("--tensor-parallel-size", type=int, help=f"default {d.tensor_parallel_size}")
    p.add_argument("--gpu-memory-utilization", type=float, help=f"default {d.gpu_memory_utilization}")
    p.add_argument("--max-model-len", type=int, help=f"default {d.max_model_len}")
    p.add_argument("--max-num-seqs", type=int, help=f"default {d.max_num_seqs}")
    p.add_argument("--max-num-batched-tokens", type=int, help="default: max model len, at least 8192 on GPU")
    p.add_argument("--max-loras", type=int, help="adapter slots on each GPU (default 0: no LoRA)")
    p.add_argument("--max-lora-rank", type=int, help=f"default {d.max_lora_rank}")
    p.add_argument("--lora-targets", help=f"comma-separated modules (default {','.join(ATTENTION_TARGETS)})")
    p.add_argument("--enforce-eager", action="store_true", default=None, help="no CUDA graphs (their memory saved)")


def serving_setup(args):
    """The :class:`ServingSetup` the options describe: ``--preset``'s engine settings, given options on top."""
    from recoverlib.engines import ENGINE_PRESETS
    from recoverlib.engines.memory import ServingSetup

    fields = {k: v for k, v in (ENGINE_PRESETS[args.preset] if args.preset else {}).items()
              if k in ServingSetup.__dataclass_fields__}
    given = {k: getattr(args, k) for k in ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len",
                                            "max_num_seqs", "max_num_batched_tokens", "max_loras", "max_lora_rank",
                                            "enforce_eager")}
    if args.lora_targets:
        given["lora_targets"] = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    fields.update({k: v for k, v in given.items() if v is not None})
    return ServingSetup(**fields)


def serving_lines(args) -> list[str]:
    """The serving report for ``args`` (model, plan, devices and engine settings)."""
    from recoverlib.engines.memory import Devices, GiB, parse_gpus, plan_serving, serving_report_lines

    devices = parse_gpus(args.gpus) if args.gpus else Devices(cpu_kv_bytes=int(args.kv_cache_gib * GiB))
    return serving_report_lines(plan_serving(_model_config(args.model), args.plan, serving_setup(args), devices))


def cmd_plan(args) -> int:
    for line in serving_lines(args):
        print(line, file=args.stdout)
    return 0


def add_commands(sub) -> None:
    """Register ``plan``."""
    from recoverlib.quant.plan import PRESETS

    p = sub.add_parser("plan", help="memory plan: does the model under a precision plan fit, with how much KV cache")
    p.add_argument("model", help=f"HF model folder, config.json, or {', '.join(PUBLIC_CONFIGS)}")
    p.add_argument("--plan", required=True, help=f"preset ({', '.join(PRESETS)}), a JSON plan file, or a dtype (bfloat16, float16) for an unquantized model")
    add_serving_options(p)
    p.set_defaults(func=cmd_plan)

