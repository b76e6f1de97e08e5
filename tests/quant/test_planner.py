"""The planner from a config alone: Mixtral-8x7B's published shapes and the tiny model's audited bytes."""

import dataclasses

import pytest

from recoverlib.quant.plan import PRESETS, GroupPrecision, PrecisionPlan
from recoverlib.quant.planner import MIXTRAL_8X7B, format_estimates, plan_bytes


def test_mixtral_parameter_counts_match_the_public_figures():
    est = plan_bytes(MIXTRAL_8X7B, PrecisionPlan("hqq"))
    assert est.total_params == pytest.approx(46.7e9, rel=0.002)
    assert est.groups["experts"].params == pytest.approx(45.1e9, rel=0.002)
    assert est.groups["attention"].params == pytest.approx(1.34e9, rel=0.002)
    assert est.groups["router"].params == 4096 * 8 * 32
    assert est.total_bytes == 2 * est.total_params


def test_mixtral_weights_against_published_memory():
    """Weights only, so at or below the published runtime figures (which add CUDA context, buffers, cache)."""
    gb = {
        name: plan_bytes(MIXTRAL_8X7B, PRESETS[name]).total_bytes / 1e9
        for name in ("bnb-nf4", "hqq-4", "bnb-int8")
    }
    assert 25 < gb["bnb-nf4"] <= 27 and 25 < gb["hqq-4"] <= 27  # published 27 GB and 26 GB
    assert 45 < gb["bnb-int8"] < 54.5  # published 54.5 GB (bnb 8-bit) and 47 GB (HQQ 8-bit g128)
    hqq3 = PrecisionPlan("hqq", attention=GroupPrecision(3, 128), experts=GroupPrecision(3, 128))
    assert 20 < plan_bytes(MIXTRAL_8X7B, hqq3).total_bytes / 1e9 < 21.8  # published 21.8 GB
    table = format_estimates([plan_bytes(MIXTRAL_8X7B, p) for p in PRESETS.values()])
    assert "hqq-attn4-exp2+router" in table


@pytest.mark.parametrize("preset", ["bnb-nf4", "bnb-int8+router", "hqq-attn4-exp3+router",
                                    "gptq-attn8-exp4+router"])
def test_tiny_bytes_from_config_alone(preset, base):
    # exact equality with the audit is asserted per preset in test_presets; here only that no weights are read
    est = plan_bytes(base / "config.json", PRESETS[preset])
    assert est.total_bytes > 0 and est.effective_bits < 16


def test_peak_quantize_memory_from_config_alone():
    from recoverlib.quant.planner import FIXED_HOST, quantize_peak

    plan = PRESETS["bnb-nf4"]
    one, four, full = (
        quantize_peak({**MIXTRAL_8X7B, "num_hidden_layers": n}, plan, max_shard_bytes=2 * 10**9)
        for n in (1, 4, 32)
    )
    assert one.piece_16bit == four.piece_16bit == full.piece_16bit
    # experts, attn, router, norms
    layer_params = 3 * 8 * 4096 * 14336 + 4096 * (2 * 4096 + 2 * 1024) + 8 * 4096 + 2 * 4096
    assert one.piece_16bit == 2 * layer_params  # the largest piece is a decoder layer in bf16
    assert four.host_bytes == full.host_bytes  # flat in layers once the output fills a shard
    quantizing = full.piece_quantized + full.largest_linear_16bit + full.transient
    assert full.host_bytes == FIXED_HOST + max(quantizing, full.shard)
    assert full.largest_linear_16bit == 2 * 4096 * 14336
    assert full.weights_bytes == plan_bytes(MIXTRAL_8X7B, plan).total_bytes and full.device_bytes == 0
    cpu, gpu = (
        quantize_peak(MIXTRAL_8X7B, plan, device, max_shard_bytes=10**9) for device in ("cpu", "cuda")
    )
    # the transient is on the GPU
    assert gpu.device_bytes > gpu.piece_quantized and gpu.host_bytes < cpu.host_bytes


def test_gptq_peak_holds_a_whole_layer_and_its_largest_module_set():
    from recoverlib.quant.planner import FIXED_HOST, GPTQ_WORK_FP32, quantize_peak

    one, full = (
        quantize_peak({**MIXTRAL_8X7B, "num_hidden_layers": n}, PRESETS["gptq-4"], max_shard_bytes=10**9)
        for n in (1, 32)
    )
    assert one.host_bytes == full.host_bytes  # GPTQModel offloads finished layers: flat in layers
    layer_16 = 2 * (3 * 8 * 4096 * 14336 + 4096 * (2 * 4096 + 2 * 1024) + 8 * 4096 + 2 * 4096)
    down = 8 * (4 * 14336**2 + int(GPTQ_WORK_FP32 * 4 * 4096 * 14336))  # the 8 experts' down_proj together
    assert full.piece_16bit == layer_16 and full.transient == down
    assert full.host_bytes == FIXED_HOST + layer_16 + down
    gpu = quantize_peak(MIXTRAL_8X7B, PRESETS["gptq-4"], "cuda")
    assert gpu.device_bytes > down and gpu.host_bytes < full.host_bytes
    attention_only = quantize_peak(
        MIXTRAL_8X7B, dataclasses.replace(PRESETS["gptq-4"], experts=GroupPrecision(), mlp=GroupPrecision())
    )
    assert attention_only.transient < full.transient / 20


def test_plan_command_says_whether_it_fits(capsys):
    from recoverlib.cli import main

    assert main(["plan", "mixtral-8x7b", "--plan", "bnb-nf4", "--host-memory", "29GB"]) == 0
    out = capsys.readouterr().out
    weights = f"{plan_bytes(MIXTRAL_8X7B, PRESETS['bnb-nf4']).total_bytes / 1e9:.2f} GB"
    assert "weights (quantized)" in out and weights in out and "host memory 29GB: fits" in out
    assert (
        main(["plan", "mixtral-8x7b", "--plan", "hqq-4", "--device", "cuda", "--device-memory", "1GB"]) == 1
    )
    assert "device memory 1GB: does NOT fit" in capsys.readouterr().out
    assert main(["plan", "mixtral-8x7b", "--plan", "hqq-4", "--host-memory", "lots"]) == 2
    assert "give a positive number with a unit" in capsys.readouterr().err


def test_plan_command_says_whether_vllm_can_serve_it(capsys):
    from recoverlib.cli import main

    assert main(["plan", "mixtral-8x7b", "--plan", "bnb-nf4", "--host-memory", "29GB"]) == 0
    out = capsys.readouterr().out
    no_bnb = "vLLM cannot serve it: a bnb-nf4 checkpoint is a bnb checkpoint: vLLM 0.32 has no bitsandbytes"
    assert no_bnb in out
    assert "KV cache" not in out  # no vLLM serving plan for what vLLM cannot serve
    main(["plan", "mixtral-8x7b", "--plan", "gptq-4", "--gpus", "2x15GB", "--preset", "kaggle-t4x2"])
    assert "\nvLLM can serve it\n" in capsys.readouterr().out
    main(["plan", "mixtral-8x7b", "--plan", "gptq-4+router", "--gpus", "2x15GB"])
    assert "quantized router; vLLM's Mixtral router is always 16-bit" in capsys.readouterr().out
