"""Merged serving: the merge arithmetic against PEFT, the on-disk cache, and outputs that do not change with
the mode."""

import json
import logging
import shutil

import pytest
import torch

from recoverlib.adapters import read_adapter
from recoverlib.engines import EngineConfig, SamplingConfig, make_engine
from recoverlib.engines.merge import MergeCache, merge_linear_lora
from recoverlib.errors import RecoverlibError
from tests.engines.conftest import render

GREEDY = SamplingConfig(samples=1, temperature=0, max_new_tokens=16)
ALL = [None, "tiny-a", "tiny-b", "tiny-c"]


def test_merge_from_tensors_equals_peft_merge_and_unload(tiny_model, tiny_adapters):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    info = read_adapter("tiny-b", tiny_adapters["tiny-b"])
    ours = merge_linear_lora(tiny_model, info, torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, str(info.path)).merge_and_unload().state_dict()
    assert len(ours) == 8  # q/k/v/o in 2 layers
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, peft[name], rtol=0, atol=1e-6)


def test_cache_merges_once_and_again_when_the_adapter_changes(
    tiny_model, tiny_adapters, tmp_path, monkeypatch
):
    import recoverlib.engines.merge as merge

    calls = []
    real = merge.merge_linear_lora
    monkeypatch.setattr(merge, "merge_linear_lora", lambda *a: calls.append(a[1].name) or real(*a))
    adapter = tmp_path / "a"
    shutil.copytree(tiny_adapters["tiny-a"], adapter)
    cache = MergeCache(tiny_model, tmp_path / "cache")
    first = cache.tensors(read_adapter("a", adapter), torch.bfloat16)
    again = MergeCache(tiny_model, tmp_path / "cache").tensors(read_adapter("a", adapter), torch.bfloat16)
    assert calls == ["a"]  # the second engine read the cache
    assert all(torch.equal(first[k], again[k]) for k in first)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["lora_alpha"] *= 2  # a changed adapter
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    changed = cache.tensors(read_adapter("a", adapter), torch.bfloat16)
    assert calls == ["a", "a"]
    assert not all(torch.equal(first[k], changed[k]) for k in first)


def test_merged_mode_is_refused_for_a_quantized_base(fake_quantized):
    pytest.importorskip("vllm", reason="vLLM is not installed")
    with pytest.raises(
        RecoverlibError, match="lora mode merged: the base is quantized, so merging is not exact"
    ):
        make_engine("vllm", fake_quantized, {}, EngineConfig(lora_mode="merged"))


def _greedy(engine_name, model, adapters, mode, rows, tmp_path):
    cfg = EngineConfig(dtype="float32", lora_mode=mode, merge_cache=str(tmp_path / "cache"), batch_size=6)
    with make_engine(engine_name, model, adapters, cfg) as eng:
        assert eng.lora_mode == mode
        return eng.generate(render(eng, rows), GREEDY, [None, *sorted(adapters)])


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["vllm", "hf"])
def test_greedy_outputs_do_not_change_with_the_mode(engine_name, tiny_model, tiny_adapters, rows, tmp_path):
    """fp32, so the only difference is merged (W + sBA) vs unmerged (Wx + sBAx) arithmetic: every row
    agrees."""
    if engine_name == "vllm":
        pytest.importorskip("vllm", reason="vLLM is not installed")
    dynamic = _greedy(engine_name, tiny_model, tiny_adapters, "dynamic", rows, tmp_path)
    merged = _greedy(engine_name, tiny_model, tiny_adapters, "merged", rows, tmp_path)
    for adapter in dynamic:
        assert merged[adapter] == dynamic[adapter], adapter


def test_full_merge_of_an_experts_adapter_equals_peft(tiny_model, experts_adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = MergeCache(tiny_model, tmp_path).model_folder(read_adapter("e", experts_adapter), torch.float32)
    ids = torch.randint(3, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    load = lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval()  # noqa: E731
    with torch.no_grad():
        peft = PeftModel.from_pretrained(load(tiny_model), str(experts_adapter))(ids).logits
        merged, base = load(folder)(ids).logits, load(tiny_model)(ids).logits
    torch.testing.assert_close(merged, peft, rtol=0, atol=1e-4)
    assert (peft - base).abs().max() > 0.1  # the adapter matters


@pytest.mark.slow
def test_experts_adapter_served_merged_by_vllm_on_cpu(tiny_model, experts_adapter, rows, tmp_path):
    """vLLM serves it from a merged checkpoint (a fresh engine). Its CPU MoE kernel and transformers' differ
    in summation order, and this adapter's large random expert weights make near-ties common, so the bound is
    loose: half the rows identical to PEFT's, every row changed from the base (the merge itself is checked
    exactly above)."""
    pytest.importorskip("vllm", reason="vLLM is not installed")
    adapters = {"experts": experts_adapter}
    reference = _greedy("hf", tiny_model, adapters, "dynamic", rows, tmp_path)
    merged = _greedy("vllm", tiny_model, adapters, "merged", rows, tmp_path)
    same = sum(a == b for a, b in zip(merged["experts"], reference["experts"], strict=True))
    assert same >= len(rows) // 2, (merged, reference)
    assert all(m != b for m, b in zip(merged["experts"], merged[None], strict=True))


def test_auto_logs_its_choice(tiny_model, tiny_adapters, caplog):
    pytest.importorskip("vllm", reason="vLLM is not installed")
    from recoverlib.engines.lora_mode import LoraCosts, LoraWorkload, choose_lora_mode

    with caplog.at_level(logging.INFO, logger="recoverlib"):
        mode = choose_lora_mode(
            "auto", LoraWorkload(100_000, 4), LoraCosts(), can_dynamic=True, can_merge=None
        )
    assert mode == "merged" and "lora mode auto -> merged" in caplog.text
