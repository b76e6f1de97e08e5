"""Choosing how adapters are served: ``dynamic`` LoRA or ``merged`` weights, by estimated time.

The estimate uses measured costs (:class:`LoraCosts`): how much slower the dynamic LoRA path generates than
the base model, and what switching to an adapter's merged weights costs (a swap inside the running engine, or
a fresh engine where swapping cannot work). The defaults were measured on this project's 2-core AVX2 CPU with
the tiny Mixtral (``benchmarks/serving.py``); measure your own machine (a GPU above all) with that script and
pass them in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from recoverlib.errors import RecoverlibError

log = logging.getLogger("recoverlib")


@dataclass(frozen=True)
class LoraCosts:
    """Costs that decide ``auto``. Units: seconds, tokens per second, and a ratio."""

    base_tokens_per_s: float = 12000.0  # vLLM, no LoRA, trained tiny Mixtral (benchmarks/results/serving.md)
    # base tok/s / multi-LoRA tok/s (serving.md: 1.16-1.17 trained, 1.13 random weights)
    dynamic_slowdown: float = 1.15
    swap_s: float = 0.05  # swap one adapter's merged attention weights in and back (reload + restore)
    restart_s: float = 2.0  # a fresh in-process engine on a merged checkpoint (serving.md: 1.96 s to start)


@dataclass(frozen=True)
class LoraWorkload:
    """What is about to be generated: new tokens in total, adapters, and adapters that cannot be swapped."""

    new_tokens: int
    adapters: int
    restart_adapters: int = 0


def estimate_seconds(mode: str, work: LoraWorkload, costs: LoraCosts) -> float:
    """Estimated generation time of ``work`` in ``mode`` (``dynamic`` or ``merged``)."""
    gen = work.new_tokens / costs.base_tokens_per_s
    if mode == "dynamic":
        return gen * costs.dynamic_slowdown
    swaps = work.adapters - work.restart_adapters
    return gen + swaps * costs.swap_s + work.restart_adapters * 2 * costs.restart_s


def merge_blocker(quantized: bool, dequantized_merge: bool) -> str | None:
    """Why merged weights are refused for a base (both engines' rule): merging into a quantized base rounds,
    so it is not exact unless a dequantized merge is asked for."""
    if quantized and not dequantized_merge:
        return "the base is quantized, so merging is not exact (ask for a dequantized merge, or use dynamic)"
    return None


def choose_lora_mode(
    requested: str, work: LoraWorkload, costs: LoraCosts, can_dynamic: bool, can_merge: str | None
) -> str:
    """Resolve ``requested`` (dynamic|merged|auto) to dynamic or merged; log the choice for ``auto``.

    ``can_merge`` is ``None`` when merging is possible, else the reason it is not.
    """
    if requested == "merged" and can_merge:
        raise RecoverlibError(f"lora mode merged: {can_merge}")
    if requested != "auto" or work.adapters == 0:
        return "dynamic" if requested == "auto" else requested
    if can_merge and not can_dynamic:
        raise RecoverlibError(f"no way to serve these adapters here: {can_merge}")
    if can_merge or not can_dynamic:
        mode = "dynamic" if can_dynamic else "merged"
        log.info("lora mode auto -> %s (%s)", mode, can_merge or "dynamic LoRA unavailable here")
        return mode
    t = {m: estimate_seconds(m, work, costs) for m in ("dynamic", "merged")}
    mode = min(t, key=t.get)
    log.info(
        "lora mode auto -> %s (estimated %.1f s merged vs %.1f s dynamic for %d new tokens, %d adapter(s))",
        mode,
        t["merged"],
        t["dynamic"],
        work.new_tokens,
        work.adapters,
    )
    return mode
