"""VLLMEngine's decisions off CPU: the pure plan (:func:`plan_vllm`) called directly, and the engine carrying
it out with a faked device and engine start (no GPU here).

The bug (issue 13, item 4): on a GPU ``--lora-mode auto`` chose ``merged`` for an adapter with LoRA on the
fused expert parameters, and the first generate raised inside merging it from tensors. The shared rule
(:func:`recoverlib.adapters.swap_merge_problem`) now sends such an adapter to a whole merged checkpoint in a
fresh engine on every platform.
"""

from __future__ import annotations

import pytest

from recoverlib.engines import EngineConfig
from recoverlib.engines import vllm as vllm_engine
from recoverlib.engines.device import Device
from recoverlib.engines.vllm_setup import ModelFacts, plan_vllm

GPU = Device(gpus=1, capability=(9, 0), memory_bytes=80 * 10**9, name="H100")
T4X2 = Device(gpus=2, capability=(7, 5), memory_bytes=15 * 10**9, name="Tesla T4")

pytest.importorskip("vllm", reason="vLLM is not installed")


class _FakeLLM:
    """Stands in for ``vllm.LLM``: records which weights folder an engine was started on."""

    def __init__(self, path):
        self.path = path


@pytest.fixture
def on_gpu(monkeypatch):
    """The engine believes it runs on a GPU; starting an engine only records the folder it would load."""
    started = []
    monkeypatch.setattr(vllm_engine, "vllm_device", lambda: GPU)

    def fake_start(path, setup):
        started.append(path)
        return _FakeLLM(path)

    monkeypatch.setattr(vllm_engine, "start_llm", fake_start)

    def no_tensor_merge(*_args, **_kw):
        raise AssertionError("an experts adapter must not be merged from tensors")

    monkeypatch.setattr(vllm_engine.MergeCache, "tensors", no_tensor_merge)
    monkeypatch.setattr(vllm_engine.VLLMEngine, "_load_weights", no_tensor_merge)
    return started


@pytest.mark.parametrize("mode", ["auto", "merged"])
def test_experts_adapter_on_gpu_is_served_from_a_merged_checkpoint(
    on_gpu, tiny_model, experts_adapter, tmp_path, mode
):
    config = EngineConfig(lora_mode=mode, dtype="float32", merge_cache=str(tmp_path / "merged"))
    engine = vllm_engine.VLLMEngine(tiny_model, {"experts": experts_adapter}, config)
    assert not engine.device.is_cpu
    assert engine.lora_mode == "merged"  # a large job makes auto pick merged (the case that crashed) ...
    assert (
        plan_vllm(EngineConfig(lora_mode="dynamic"), GPU, engine.adapters, ModelFacts(tiny_model)).lora_mode
        == "dynamic"
    )  # ... where vLLM on a GPU could serve expert LoRA dynamically
    assert engine.setup.restart_adapters == {"experts"}
    with engine._serving("experts"):
        served = engine._llm.path
    assert served != tiny_model and (served / "config.json").is_file()  # a whole merged model folder
    with engine._serving(None):
        assert engine._llm.path == tiny_model
    assert on_gpu == [tiny_model, served, tiny_model]


def test_attention_adapter_on_gpu_is_swapped_not_restarted(on_gpu, tiny_model, tiny_adapters):
    engine = vllm_engine.VLLMEngine(tiny_model, tiny_adapters, EngineConfig(lora_mode="merged"))
    assert engine.setup.restart_adapters == frozenset()


def test_small_job_with_experts_adapter_on_gpu_goes_dynamic(on_gpu, tiny_model, experts_adapter, tmp_path):
    """Where a restart costs more than LoRA's slowdown, auto serves the experts adapter as LoRA (vLLM can, on
    GPU)."""
    config = EngineConfig(lora_mode="auto", expected_new_tokens=1000, merge_cache=str(tmp_path))
    engine = vllm_engine.VLLMEngine(tiny_model, {"experts": experts_adapter}, config)
    assert engine.lora_mode == "dynamic"


@pytest.fixture
def on_t4x2(on_gpu, monkeypatch):
    """As :func:`on_gpu`, on Kaggle's machine: two T4s (compute capability 7.5, 15 GB)."""
    monkeypatch.setattr(vllm_engine, "vllm_device", lambda: T4X2)
    return on_gpu


def test_kaggle_preset_reaches_vllm(tiny_model, tiny_adapters):
    from recoverlib.adapters import check_adapters
    from recoverlib.engines import engine_config_with

    config = engine_config_with("kaggle-t4x2", lora_mode="dynamic", max_loras=2, max_model_len=1024,
                                max_num_batched_tokens=1024)
    adapters = {a.name: a for a in check_adapters(tiny_model, tiny_adapters)}
    setup = plan_vllm(config, T4X2, adapters, ModelFacts(tiny_model, native_max_len=1024))
    assert setup.dtype == "float16"  # the preset's; auto would give the same on a T4
    kwargs = setup.llm_kwargs
    assert (
        kwargs["tensor_parallel_size"],
        kwargs["gpu_memory_utilization"],
        kwargs["disable_custom_all_reduce"],
        kwargs["enforce_eager"],
        kwargs["max_num_batched_tokens"],
    ) == (2, 0.95, True, True, 1024)
    assert (kwargs["max_loras"], kwargs["max_cpu_loras"]) == (2, 3)  # two resident, all three in CPU memory
    assert setup.env == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} and not setup.separate_base
    assert "block_size" not in kwargs  # GPUs keep vLLM's own


def test_auto_dtype_on_t4_is_fp16_and_bf16_is_refused_before_start(on_t4x2, tiny_model):
    from recoverlib.errors import RecoverlibError

    assert vllm_engine.VLLMEngine(tiny_model, {}, EngineConfig()).dtype == "float16"
    on_t4x2.clear()
    with pytest.raises(RecoverlibError, match="cannot compute in bfloat16.*--dtype float16"):
        vllm_engine.VLLMEngine(tiny_model, {}, EngineConfig(dtype="bfloat16"))
    assert on_t4x2 == []  # refused before any engine start
