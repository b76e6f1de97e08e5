"""HFEngine (transformers + PEFT) on the tiny Mixtral, and its agreement with VLLMEngine."""

import pytest

from recoverlib.engines import EngineConfig, SamplingConfig, make_engine
from tests.engines.conftest import render

GREEDY = SamplingConfig(samples=1, temperature=0, max_new_tokens=12)
ALL = [None, "tiny-a", "tiny-b", "tiny-c"]


@pytest.fixture(scope="module")
def engine(tiny_model, tiny_adapters):
    eng = make_engine("hf", tiny_model, tiny_adapters, EngineConfig(batch_size=4, lora_mode="dynamic"))
    yield eng
    eng.close()


def test_each_adapter_differs_from_base(engine, rows):
    out = engine.generate(render(engine, rows), GREEDY, ALL)
    for adapter in ALL[1:]:
        assert sum(a != b for a, b in zip(out[adapter], out[None], strict=True)) >= len(rows) - 1


def test_seeded_sampling_repeats_and_leaves_global_rng_alone(engine, rows):
    import torch

    prompts = render(engine, rows)
    s = SamplingConfig(samples=2, temperature=1.0, max_new_tokens=8, seed=5)
    state = torch.random.get_rng_state()
    first = engine.generate(prompts, s, ["tiny-a", None])
    assert torch.equal(state, torch.random.get_rng_state())
    assert first == engine.generate(prompts, s, ["tiny-a", None])
    assert first != engine.generate(
        prompts, SamplingConfig(samples=2, temperature=1.0, max_new_tokens=8, seed=6), ["tiny-a", None]
    )
    assert all(len(t) == 2 for t in first["tiny-a"])


@pytest.mark.slow
def test_greedy_agrees_with_vllm(tiny_model, tiny_adapters, rows):
    """fp32 in both engines: adapters agree on every row. Differences left come from near-ties of random
    weights (different kernels sum in different orders), so the bound: 3 of 4 rows identical, first token
    always equal."""
    pytest.importorskip("vllm", reason="vLLM is not installed")
    cfg = EngineConfig(dtype="float32", batch_size=6, lora_mode="dynamic")
    outs = {}
    for name in ("hf", "vllm"):
        with make_engine(name, tiny_model, tiny_adapters, cfg) as eng:
            outs[name] = eng.generate(
                render(eng, rows), SamplingConfig(samples=1, temperature=0, max_new_tokens=16), ALL
            )
            tok = eng.tokenizer
    for adapter in ALL:
        pairs = list(zip(outs["hf"][adapter], outs["vllm"][adapter], strict=True))
        same = sum(h == v for h, v in pairs)
        assert same >= 0.75 * len(pairs), (adapter, pairs)
        for h, v in pairs:
            assert (
                tok(h[0], add_special_tokens=False)["input_ids"][:1]
                == tok(v[0], add_special_tokens=False)["input_ids"][:1]
            )


def test_auto_merges_where_merging_is_exact(tiny_model, tiny_adapters, experts_adapter):
    with make_engine("hf", tiny_model, {"tiny-a": tiny_adapters["tiny-a"]}, EngineConfig()) as eng:
        assert eng.lora_mode == "merged"
    with make_engine("hf", tiny_model, {"experts": experts_adapter}, EngineConfig()) as eng:
        # LoRA on the fused expert parameters is per-expert LoRA, merged from its sliced pairs into the
        # split experts
        assert eng.lora_mode == "merged"
    with make_engine("hf", tiny_model, {}, EngineConfig()) as eng:
        assert eng.lora_mode == "dynamic"


def test_auto_computes_in_float32_on_cpu_unless_asked(engine):
    from recoverlib.engines.device import Device
    from recoverlib.engines.hf import compute_dtype

    assert engine.dtype == "float32" and engine.model.dtype.is_floating_point  # the tiny checkpoint is bf16
    assert str(engine.model.dtype) == "torch.float32"
    assert compute_dtype("auto", Device(), "bfloat16") == "float32"
    assert compute_dtype("bfloat16", Device(), "bfloat16") == "bfloat16"  # asked for: what you get
    gpu = Device(gpus=1, capability=(8, 0), memory_bytes=1 << 34, name="A100")
    assert compute_dtype("auto", gpu, "bfloat16") == "bfloat16"
