import pytest

from recoverlib.engines.lora_mode import LoraCosts, LoraWorkload, choose_lora_mode, estimate_seconds
from recoverlib.errors import RecoverlibError

COSTS = LoraCosts(base_tokens_per_s=1000, dynamic_slowdown=3.0, swap_s=0.1, restart_s=5.0)


def test_estimates():
    work = LoraWorkload(new_tokens=10_000, adapters=4, restart_adapters=1)
    assert estimate_seconds("dynamic", work, COSTS) == pytest.approx(30.0)
    assert estimate_seconds("merged", work, COSTS) == pytest.approx(10 + 3 * 0.1 + 2 * 5.0)


def test_auto_picks_merged_for_big_jobs_and_dynamic_for_tiny_ones_with_restarts():
    assert choose_lora_mode("auto", LoraWorkload(100_000, 4), COSTS, True, None) == "merged"
    assert (
        choose_lora_mode("auto", LoraWorkload(1_000, 4, restart_adapters=4), COSTS, True, None) == "dynamic"
    )


def test_auto_respects_what_is_possible():
    assert choose_lora_mode("auto", LoraWorkload(10**6, 4), COSTS, True, "quantized base") == "dynamic"
    assert choose_lora_mode("auto", LoraWorkload(10, 4, 4), COSTS, False, None) == "merged"
    with pytest.raises(RecoverlibError, match="no way to serve"):
        choose_lora_mode("auto", LoraWorkload(10, 4), COSTS, False, "quantized base")


def test_explicit_modes():
    assert choose_lora_mode("dynamic", LoraWorkload(10**6, 4), COSTS, True, None) == "dynamic"
    with pytest.raises(RecoverlibError, match="lora mode merged: quantized base"):
        choose_lora_mode("merged", LoraWorkload(1, 1), COSTS, True, "quantized base")
    assert choose_lora_mode("auto", LoraWorkload(10**6, 0), COSTS, True, None) == "dynamic"  # no adapters
