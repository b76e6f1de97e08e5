"""``recoverlib plan``: will a model, quantized by a plan, fit where it is quantized and where it is served?

Two reports from ``config.json`` alone, nothing loaded: quantizing
(:func:`recoverlib.quant.planner.quantize_peak`: weights, peak host and device memory of the streaming
quantize, against ``--host-memory`` / ``--device-memory``) and serving (:mod:`recoverlib.engines.memory`:
vLLM's weights, LoRA buffers, overheads and KV cache per device, against ``--gpus`` or this CPU). Exit status
0 when everything fits, 1 when something does not.
"""

from __future__ import annotations

import argparse

from recoverlib.architectures import PUBLIC_CONFIGS, architecture_of, public_config
from recoverlib.engines import ENGINE_PRESETS
from recoverlib.engines.memory import (
    ATTENTION_TARGETS,
    Devices,
    GiB,
    ServingSetup,
    parse_gpus,
    plan_serving,
    serving_report_lines,
)
from recoverlib.engines.vllm_support import (
    ServedWeights,
    kernel_problem,
    needs_kernels,
    probe_vllm_kernels,
    weights_problem,
)
from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import read_config
from recoverlib.quant.checkpoint import parse_size
from recoverlib.quant.plan import PRESETS, plan_for_model
from recoverlib.quant.planner import quantize_peak


def _model_config(text: str):
    """A public config by name (``mistral-7b``; names in :data:`recoverlib.architectures.PUBLIC_CONFIGS`),
    else the folder or config.json as given."""
    return public_config(text) or text


def add_serving_options(p: argparse.ArgumentParser) -> None:
    """The serving planner's options; unset ones come from ``--preset``, then the planner's defaults."""

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
    p.add_argument("--block-size", type=int, help="KV-cache block in tokens (default 32 on CPU, 16 on GPU)")
    p.add_argument("--lora-targets", help=f"comma-separated modules (default {','.join(ATTENTION_TARGETS)})")
    p.add_argument(
        "--enforce-eager", action="store_true", default=None, help="no CUDA graphs (their memory saved)"
    )


def serving_setup(args):
    """The :class:`ServingSetup` the options describe: ``--preset``'s engine settings, given options on
    top."""

    fields = {k: v for k, v in (ENGINE_PRESETS[args.preset] if args.preset else {}).items()
              if k in ServingSetup.__dataclass_fields__}
    given = {
        k: getattr(args, k)
        for k in (
            "tensor_parallel_size",
            "gpu_memory_utilization",
            "max_model_len",
            "max_num_seqs",
            "max_num_batched_tokens",
            "max_loras",
            "max_lora_rank",
            "enforce_eager",
            "block_size",
        )
    }
    if args.lora_targets:
        given["lora_targets"] = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    fields.update({k: v for k, v in given.items() if v is not None})
    return ServingSetup(**fields)


def serving_lines(args) -> list[str]:
    """The serving report for ``args`` (model, plan, devices and engine settings)."""

    devices = parse_gpus(args.gpus) if args.gpus else Devices(cpu_kv_bytes=int(args.kv_cache_gib * GiB))
    return serving_report_lines(
        plan_serving(_model_config(args.model), args.plan, serving_setup(args), devices)
    )


def add_quantize_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", default="cpu", help="where layers would be quantized: cpu or cuda (default cpu)"
    )
    p.add_argument("--max-shard-size", default="5GB", help="output shard size the quantize would use")
    p.add_argument("--host-memory", default=None, help="RAM available for quantizing, e.g. 29GB")
    p.add_argument("--device-memory", default=None, help="GPU memory available for quantizing, e.g. 15GB")


def quantize_device(text: str) -> str:
    """``cpu`` or ``cuda`` from ``--device`` (``cuda:N`` is ``cuda``); anything else is a one-line error."""

    if text == "cpu" or text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        return text.split(":")[0]
    raise RecoverlibError(f"--device {text!r}: use cpu, cuda or cuda:N")


def quantize_lines(args) -> tuple[list[str], bool]:
    """The quantization report (weights, peak memory, fits) and whether it fits what was given."""

    config = read_config(_model_config(args.model))
    plan = plan_for_model(args.plan, config, args.model)
    device = quantize_device(args.device)
    peak = quantize_peak(config, plan, device, parse_size(args.max_shard_size))
    lines = [
        f"quantizing with {plan.name} ({plan.backend}) on {device}, {config.get('num_hidden_layers')} layers"
        f" of {architecture_of(config).describe()}",
        f"  weights (quantized)      {peak.weights_bytes / 1e9:9.2f} GB",
        f"  one layer 16-bit         {peak.piece_16bit / 1e9:9.2f} GB, quantized "
        f"{peak.piece_quantized / 1e9:.2f} GB",
        f"  peak host                {peak.host_bytes / 1e9:9.2f} GB",
    ]
    if device != "cpu":
        lines.append(f"  peak device              {peak.device_bytes / 1e9:9.2f} GB")
    fits = True
    for label, given, need in (
        ("host", args.host_memory, peak.host_bytes),
        ("device", args.device_memory, peak.device_bytes),
    ):
        if given is not None:
            ok = need <= parse_size(given)
            fits &= ok
            lines.append(f"  {label} memory {given}: {'fits' if ok else 'does NOT fit'}")
    return lines, fits


def vllm_line(plan, on_gpus: bool) -> tuple[str, bool]:
    """Whether vLLM can serve what ``plan`` writes (the line to print, and yes/no): on ``--gpus`` by the
    checkpoint alone, on this CPU also by this machine's int4 kernels (vLLM is imported to ask it)."""
    weights = ServedWeights.from_plan(plan, f"a {plan.name} checkpoint")
    problem = weights_problem(weights)
    if not problem and needs_kernels(weights) and not on_gpus:
        kernels = probe_vllm_kernels()
        problem = kernel_problem(weights, kernels)
        if not problem:
            return f"vLLM on this CPU can serve it ({kernels.describe()})", True
    if problem:
        return f"vLLM cannot serve it: {problem}", False
    return "vLLM can serve it", True


def cmd_plan(args) -> int:
    fits = True
    serving_setup(args)  # the engine settings are checked even where there is no serving plan to make
    if args.plan in PRESETS or args.plan.endswith(".json"):  # a dtype plan (bfloat16) quantizes nothing
        lines, fits = quantize_lines(args)
        plan = plan_for_model(args.plan, read_config(_model_config(args.model)), args.model)
        line, servable = vllm_line(plan, bool(args.gpus))
        print("\n".join([*lines, line]), file=args.stdout)
        if not servable:  # the serving plan below is vLLM's: nothing to plan
            print("(no vLLM serving plan: the HF engine serves it)", file=args.stdout)
            return 0 if fits else 1
    serving = serving_lines(args)
    print("\n".join(serving), file=args.stdout)
    return 0 if fits and serving[-1].startswith("fits") else 1


def add_commands(sub) -> None:
    """Register ``plan``."""

    p = sub.add_parser(
        "plan", help="memory plan: does the model under a precision plan fit, with how much KV cache"
    )
    p.add_argument("model", help=f"HF model folder, config.json, or {', '.join(PUBLIC_CONFIGS)}")
    p.add_argument(
        "--plan",
        required=True,
        help=f"preset ({', '.join(PRESETS)}), a JSON plan file, or a dtype (bfloat16, float16) for an "
             "unquantized model",
    )
    add_quantize_options(p)
    add_serving_options(p)
    p.set_defaults(func=cmd_plan)

