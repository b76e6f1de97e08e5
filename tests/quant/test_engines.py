"""Engines on quantized checkpoints: HFEngine serves two LoRA adapters (QLoRA style); vLLM on CPU refuses."""

import pytest

from recoverlib.engines.base import SamplingConfig


def _generate(path, adapters):
    from recoverlib.engines.hf import HFEngine

    sampling = SamplingConfig(samples=2, temperature=0.7, max_new_tokens=4, seed=3)
    with HFEngine(path, adapters=adapters) as engine:
        first = engine.generate(["The garden was quiet."], sampling, [None, "tiny-a", "tiny-b"])
        again = engine.generate(["The garden was quiet."], sampling, ["tiny-b"])
        wrapped = type(engine.model.base_model.model.model.layers[0].self_attn.q_proj).__module__
    return first, again, wrapped


@pytest.mark.parametrize(
    "preset, lora_module",
    [
        pytest.param("bnb-nf4", "peft.tuners.lora.bnb", id="bnb-nf4"),
        pytest.param("hqq-attn4-exp2", "peft.tuners.lora.hqq", marks=pytest.mark.slow, id="hqq-attn4-exp2"),
        pytest.param("gptq-attn8-exp4", "peft.tuners.lora.gptq", marks=pytest.mark.slow,
                     id="gptq-attn8-exp4"),
    ],
)
def test_hf_engine_serves_two_adapters_on_a_quantized_base(preset, lora_module, quantized, quant_tiny):
    from recoverlib.tiny import adapter_paths

    first, again, wrapped = _generate(quantized(preset).out, adapter_paths(quant_tiny))
    assert wrapped == lora_module  # LoRA sits on the quantized layer itself
    assert set(first) == {None, "tiny-a", "tiny-b"}
    assert all(len(v) == 1 and len(v[0]) == 2 for v in first.values())
    assert first["tiny-b"] == again["tiny-b"]  # seeded per request
    assert len({tuple(v[0]) for v in first.values()}) > 1  # adapters change the output


def test_quantized_checkpoints_are_recognised(quantized):
    from recoverlib.quant import is_quantized

    for preset in ("hqq-4", "bnb-nf4"):
        assert is_quantized(quantized(preset).out)


def test_merged_mode_on_a_quantized_base_needs_a_dequantized_merge(quantized, quant_tiny):
    from recoverlib.engines import EngineConfig, make_engine
    from recoverlib.errors import RecoverlibError
    from recoverlib.tiny import adapter_paths

    path, adapters = quantized("bnb-int8").out, adapter_paths(quant_tiny)
    with pytest.raises(RecoverlibError, match="quantized, so merging is not exact"):
        make_engine("hf", path, adapters, EngineConfig(lora_mode="merged"))
    greedy = SamplingConfig(samples=1, temperature=0, max_new_tokens=6)
    prompts = ["The garden was quiet.", "Rain fell on the roses."]
    with make_engine("hf", path, adapters, EngineConfig(lora_mode="dynamic")) as eng:
        dynamic = eng.generate(prompts, greedy, [None, "tiny-a"])
    with make_engine("hf", path, adapters, EngineConfig(lora_mode="merged", dequantized_merge=True)) as eng:
        merged = eng.generate(prompts, greedy, [None, "tiny-a", None])
    assert merged[None] == dynamic[None]  # the base is served without the adapter before and after merging
    assert merged["tiny-a"] != merged[None]


def test_gptq_mixtral_without_metadata_is_read_from_its_config(quantized, input_ids, tmp_path):
    """A GPTQ Mixtral as others publish it (no recoverlib_quant.json): the HF engine reads its config and
    loads it through the same layer-by-layer loader, so the model is the one the metadata would give."""
    import shutil

    import torch

    from recoverlib.engines.hf import load_causal_lm

    written = quantized("gptq-attn8-exp4").out
    bare = shutil.copytree(written, tmp_path / "bare")
    (bare / "recoverlib_quant.json").unlink()
    with torch.no_grad():
        assert torch.equal(load_causal_lm(bare, "bfloat16")(input_ids).logits,
                           load_causal_lm(written, "bfloat16")(input_ids).logits)
