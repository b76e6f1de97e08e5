"""The planner's weight bytes for every preset on Mixtral-8x7B's public config, beside the published figures.

    python -m benchmarks.quant_mixtral_plan --out benchmarks/results/quant_mixtral_plan.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

from recoverlib.quant.plan import PRESETS, GroupPrecision, PrecisionPlan
from recoverlib.quant.planner import MIXTRAL_8X7B, format_estimates, plan_bytes

# FACTS.md, "Published memory and quality for Mixtral-8x7B": runtime memory (HQQ's eval script), unit "GB".
PUBLISHED = {
    "bnb-int8": ("bnb 8-bit", 54.5),
    "hqq-8 g128": ("HQQ 8-bit g128", 47.0),
    "bnb-nf4": ("bnb 4-bit", 27.0),
    "hqq-4": ("HQQ 4-bit g64", 26.0),
    "hqq-3 g128": ("HQQ 3-bit g128", 21.8),
    "hqq-2 g16": ("HQQ 2-bit g16 (8-bit scale/zero)", 18.0),
    "hqq-attn4-exp2": ("HQQ attention 4-bit + experts 2-bit", 18.2),
}


def reference_plans() -> list[PrecisionPlan]:
    g = GroupPrecision
    return [PrecisionPlan("hqq", attention=g(8, 128), experts=g(8, 128), name="hqq-8 g128"),
            PrecisionPlan("hqq", attention=g(3, 128), experts=g(3, 128), name="hqq-3 g128"),
            PrecisionPlan("hqq", attention=g(2, 16), experts=g(2, 16), name="hqq-2 g16"),
            PrecisionPlan("hqq", name="bf16")]


def comparison() -> str:
    plans = {p.name: p for p in [*PRESETS.values(), *reference_plans()]}
    rows = [
        "| plan | planner weights GB (1e9) | planner GiB | published (runtime) | published value |",
        "|---|---|---|---|---|",
    ]
    for key, (label, value) in PUBLISHED.items():
        est = plan_bytes(MIXTRAL_8X7B, plans[key])
        rows.append(
            f"| {key} | {est.total_bytes / 1e9:.2f} | {est.total_bytes / 2**30:.2f} | {label} | {value} |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    plans = [*PRESETS.values(), *reference_plans()]
    text = (
        "Weights only (no KV cache, activations, CUDA context). GB = 1e9 bytes per group.\n\n```\n"
        + format_estimates([plan_bytes(MIXTRAL_8X7B, p) for p in plans])
        + "\n```\n\n"
        + comparison()
        + "\n"
    )
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Mixtral-8x7B weight memory per plan (recoverlib.quant.planner)\n\n" + text)


if __name__ == "__main__":
    main()
