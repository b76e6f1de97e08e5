import json
import shutil

import pytest

from recoverlib.adapters import check_adapters, read_adapter
from recoverlib.engines.base import SamplingConfig
from recoverlib.errors import RecoverlibError
from recoverlib.tiny import TinySpec, make_tiny


def test_reads_adapter_rank_and_modules(tiny_adapters):
    info = read_adapter("a", tiny_adapters["tiny-a"])
    assert info.rank == 4
    assert "model.layers.0.self_attn.q_proj" in info.target_modules
    assert not info.targets_experts


def test_experts_adapter_is_detected(experts_adapter):
    assert read_adapter("e", experts_adapter).targets_experts


def test_missing_adapter_folder(tmp_path, tiny_model):
    with pytest.raises(RecoverlibError, match="no such folder"):
        check_adapters(tiny_model, {"x": tmp_path / "missing"})


def test_not_an_adapter_folder(tmp_path, tiny_model):
    with pytest.raises(RecoverlibError, match="no adapter_config.json"):
        check_adapters(tiny_model, {"x": tmp_path})


def test_adapter_for_another_model_is_refused(tmp_path, tiny_model):
    other = make_tiny(tmp_path / "other", adapters=1, spec=TinySpec(hidden_size=64, num_hidden_layers=1))
    with pytest.raises(RecoverlibError, match=r"lora_A of model\.layers\.0\.self_attn\.k_proj is \(4, 64\)"
                       r" but the base's k_proj takes 128 inputs \(adapter for another model\?\)"):
        check_adapters(tiny_model, {"other": other / "adapters" / "tiny-a"})


def test_prime_is_read_from_adapter_metadata(tmp_path, tiny_adapters):
    folder = tmp_path / "primed"
    shutil.copytree(tiny_adapters["tiny-a"], folder)
    (folder / "recoverlib_adapter.json").write_text(json.dumps({"prime": "Rewrite"}))
    assert read_adapter("p", folder).prime == "Rewrite"


def test_request_seeds_are_distinct_and_stable():
    s = SamplingConfig(seed=1)
    seeds = {s.request_seed(i, a) for i in range(50) for a in range(4)}
    assert len(seeds) == 200
    assert (
        s.request_seed(3, 1)
        == SamplingConfig(seed=1).request_seed(3, 1)
        != SamplingConfig(seed=2).request_seed(3, 1)
    )


@pytest.mark.parametrize("kwargs", [{"samples": 0}, {"temperature": -1}, {"top_p": 0}, {"max_new_tokens": 0}])
def test_bad_sampling_is_refused(kwargs):
    with pytest.raises(RecoverlibError):
        SamplingConfig(**kwargs)


def test_an_engine_draws_once_per_prompt_when_greedy():
    assert SamplingConfig(samples=4, temperature=0).draws == 1
    assert SamplingConfig(samples=4, temperature=0.7).draws == 4
