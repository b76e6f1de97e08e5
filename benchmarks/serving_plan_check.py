"""Does the serving planner (recoverlib/engines/memory.py) agree with what vLLM allocates?

For the tiny Mixtral on this CPU, at tensor parallel 1 and 2, with and without LoRA slots, the planner's
weights per rank, LoRA buffer bytes per rank and KV-cache tokens are compared with vLLM's own: the bytes of
the model's parameters and of its LoRA stacks as each worker holds them (read inside the workers), and the
KV-cache blocks x block size vLLM sized from ``VLLM_CPU_KVCACHE_SPACE``. The ratio planner / vLLM is the
result (target: within 10%).

Reproduce (about 4 minutes on 2 cores; tensor parallel 2 starts in about 90 s):
    python -m benchmarks.serving_plan_check
Quick (tensor parallel 1 only, scratch output): ``--quick``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

KV_GIB = 1


def _rank_bytes(model) -> tuple[int, int]:
    """(parameter bytes outside LoRA, LoRA stack bytes) of one worker's model."""
    import torch

    lora_ids, lora = set(), 0
    for module in model.modules():
        for attr in ("lora_a_stacked", "lora_b_stacked"):
            for t in getattr(module, attr, None) or ():
                if isinstance(t, torch.Tensor) and id(t) not in lora_ids:
                    lora_ids.add(id(t))
                    lora += t.numel() * t.element_size()
    seen, weights = set(lora_ids), 0
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if p.numel() == 0 and hasattr(module, "output_size_per_partition"):
                # The CPU backend moved this linear's weight into a oneDNN (or sgl) packed handle and left an
                # empty parameter (vllm/model_executor/layers/utils.py dispatch_cpu_unquantized_gemm): count
                # its shape.
                weights += (
                    module.input_size_per_partition * module.output_size_per_partition * p.element_size()
                )
            else:
                weights += p.numel() * p.element_size()
    return weights, lora


def measure_vllm(engine) -> dict:
    """What a running :class:`VLLMEngine` holds per rank: weights and LoRA bytes (rank 0), KV-cache tokens."""
    per_rank = engine._llm.apply_model(_rank_bytes)
    cache = engine._llm.llm_engine.vllm_config.cache_config
    return {
        "weights": per_rank[0][0],
        "lora": per_rank[0][1],
        "kv_tokens": cache.num_gpu_blocks * cache.block_size,
        "ranks": len(per_rank),
    }


def planned(model: Path, tp: int, loras: int, rank: int, targets: tuple[str, ...], max_len: int) -> dict:
    from recoverlib.engines.memory import Devices, GiB, ServingSetup, plan_serving

    setup = ServingSetup(tensor_parallel_size=tp, max_model_len=max_len, max_loras=loras, max_lora_rank=rank,
                         lora_targets=targets or ("q_proj",))
    est = plan_serving(model, "bfloat16", setup, Devices(cpu_kv_bytes=KV_GIB * GiB))
    return {"weights": est.weights, "lora": est.lora, "kv_tokens": est.kv_tokens}


def compare(model: Path, adapters: dict, tp: int) -> list[dict]:
    """Rows (quantity, planner, vLLM, ratio) for one engine start."""
    from recoverlib.engines import EngineConfig, make_engine

    config = EngineConfig(tensor_parallel_size=tp, lora_mode="dynamic", dtype="bfloat16", kv_cache_gib=KV_GIB)
    engine = make_engine("vllm", model, adapters, config)
    try:
        got = measure_vllm(engine)
        kwargs = engine.setup.llm_kwargs
        want = planned(model, tp, kwargs.get("max_loras", 0), kwargs.get("max_lora_rank", 16),
                       tuple(kwargs.get("lora_target_modules", ())), engine.max_model_len)
    finally:
        engine.close()
    rows = []
    for key in ("weights", "lora", "kv_tokens"):
        ratio = want[key] / got[key] if got[key] else float(want[key] == 0)
        rows.append({"tensor parallel": tp, "adapters": len(adapters), "quantity": key, "planner": want[key],
                     "vllm": got[key], "planner / vllm": ratio})
    return rows


def main() -> None:
    import pandas as pd

    from benchmarks.report import machine_info, machine_line, results_dir, write_table
    from recoverlib.cache import cache_dir
    from recoverlib.tiny import adapter_paths, make_tiny

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tensor parallel 1 only, output to a scratch folder"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    # apply_model's function to the TP workers
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    folder = cache_dir("bench-plan-check") / "tiny"
    if not (folder / "model" / "config.json").is_file():
        make_tiny(folder, adapters=3, seed=0)
    model, adapters = folder / "model", adapter_paths(folder)
    rows = []
    for tp in (1,) if args.quick else (1, 2):
        for adapter_set in ({}, adapters):
            rows += compare(model, adapter_set, tp)
    frame = pd.DataFrame(rows)
    worst = max(abs(r - 1) for r in frame["planner / vllm"])
    notes = [
        f"Machine: {machine_line(machine_info())}.",
        f"Tiny Mixtral (hidden 128, 2 layers, 4 experts, 1 KV head), bf16, KV space {KV_GIB} GiB per rank;"
        " adapters r4, r8, r16 on q/k/v/o (vLLM slot rank 16). Bytes per rank (rank 0).",
        f"Largest deviation: {100 * worst:.1f}%.",
    ]
    path = write_table(frame, results_dir(args.out, args.quick), "serving_plan_check",
                       "Serving planner vs vLLM (CPU)", notes)
    print(frame.to_string(index=False))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
