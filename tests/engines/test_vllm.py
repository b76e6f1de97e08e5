"""VLLMEngine on the tiny Mixtral on CPU: mixed adapters in one call, seeds, n samples, refusals."""


import pytest

from recoverlib.engines import EngineConfig, SamplingConfig, make_engine
from recoverlib.errors import RecoverlibError
from tests.engines.conftest import render

pytest.importorskip("vllm", reason="vLLM is not installed")

GREEDY = SamplingConfig(samples=1, temperature=0, max_new_tokens=12)
ALL = [None, "tiny-a", "tiny-b", "tiny-c"]


@pytest.fixture(scope="module")
def engine(tiny_model, tiny_adapters):
    eng = make_engine("vllm", tiny_model, tiny_adapters, EngineConfig(lora_mode="dynamic"))
    yield eng
    eng.close()


def test_adapters_mixed_in_one_call_each_differs_from_base(engine, rows):
    out = engine.generate(render(engine, rows), GREEDY, ALL)
    assert set(out) == set(ALL) and all(len(v) == len(rows) for v in out.values())
    for adapter in ALL[1:]:
        differ = sum(a != b for a, b in zip(out[adapter], out[None], strict=True))
        assert differ >= len(rows) - 1, f"{adapter} changes too few outputs"


def test_mixed_batch_equals_separate_calls(engine, rows):
    """Base requests batched with adapter requests get no adapter (the plugin's mask; vLLM picked the last
    slot)."""
    prompts = render(engine, rows)
    mixed = engine.generate(prompts, GREEDY, ALL)
    for adapter in ALL:
        assert engine.generate(prompts, GREEDY, [adapter])[adapter] == mixed[adapter], adapter


def test_same_seed_repeats_other_seed_differs(engine, rows):
    prompts = render(engine, rows)
    s1 = SamplingConfig(samples=3, temperature=1.0, max_new_tokens=10, seed=11)
    first, again = engine.generate(prompts, s1, ALL), engine.generate(prompts, s1, ALL)
    other = engine.generate(
        prompts, SamplingConfig(samples=3, temperature=1.0, max_new_tokens=10, seed=12), ALL
    )
    assert first == again
    assert first != other


def test_n_samples_per_row_and_prompts_per_adapter(engine, rows):
    prompts = {"tiny-a": render(engine, rows), "tiny-b": render(engine, rows, prime="Rewrite")}
    out = engine.generate(
        prompts, SamplingConfig(samples=4, temperature=1.0, max_new_tokens=8), ["tiny-a", "tiny-b"]
    )
    assert all(len(texts) == 4 for texts in out["tiny-a"] + out["tiny-b"])
    assert any(len(set(texts)) > 1 for texts in out["tiny-a"])  # samples, not copies


def test_texts_equal_vllms_own_detokenization(engine, rows):
    """The engine asks vLLM for token ids and decodes them in one batch: same texts as vLLM's detokenizer."""
    prompts = render(engine, rows)
    sampling = SamplingConfig(samples=2, temperature=1.0, max_new_tokens=16, seed=5)
    ours = engine.generate(prompts, sampling, [None])[None]
    ids = [{"prompt_token_ids": x} for x in engine.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    params = [engine._params(sampling, i, None) for i in range(len(prompts))]
    for p in params:
        p.detokenize = True
    theirs = [[c.text for c in out.outputs] for out in engine._llm.generate(ids, params, use_tqdm=False)]
    assert ours == theirs
    assert any(t.strip() for texts in ours for t in texts)


def test_unknown_adapter_is_refused(engine, rows):
    with pytest.raises(RecoverlibError, match="unknown adapter"):
        engine.generate(render(engine, rows), GREEDY, ["nope"])


def test_experts_adapter_is_refused_before_start_in_dynamic_mode(tiny_model, experts_adapter):
    with pytest.raises(RecoverlibError, match="expert weights.*--lora-mode merged or --engine hf"):
        make_engine("vllm", tiny_model, {"experts": experts_adapter}, EngineConfig(lora_mode="dynamic"))


def test_rank_above_engine_maximum(tiny_model, tiny_adapters):
    with pytest.raises(RecoverlibError, match=r"exceeds the engine's max_lora_rank 8: tiny-c \(r=16\)"):
        make_engine("vllm", tiny_model, tiny_adapters, EngineConfig(max_lora_rank=8, lora_mode="dynamic"))

