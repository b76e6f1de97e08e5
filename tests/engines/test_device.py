"""dtype ``auto``, presets and the device checks, with the device faked (no GPU needed)."""

from __future__ import annotations

import pytest

from recoverlib.engines import ENGINE_PRESETS, EngineConfig, engine_config_with
from recoverlib.engines.device import Device, check_vllm_settings, cpu_thread_binding, resolve_dtype
from recoverlib.errors import RecoverlibError

CPU = Device()
T4X2 = Device(gpus=2, capability=(7, 5), memory_bytes=15 * 10**9, name="Tesla T4")
A100 = Device(gpus=1, capability=(8, 0), memory_bytes=80 * 10**9, name="A100")


@pytest.mark.parametrize(("device", "checkpoint", "expected"), [
    (CPU, "bfloat16", "bfloat16"),
    # fp32 checkpoints are served in the device's preferred 16-bit dtype, as vLLM does
    (CPU, "float32", "bfloat16"),
    (CPU, None, "bfloat16"),
    (A100, "bfloat16", "bfloat16"),
    (A100, "float16", "float16"),
    (T4X2, "bfloat16", "float16"),
    (T4X2, "float32", "float16"),
    (Device(gpus=1, capability=(7, 0), name="V100"), "bfloat16", "float16"),
])
def test_auto_dtype(device, checkpoint, expected):
    assert resolve_dtype("auto", device, checkpoint) == expected


def test_explicit_dtype_the_device_cannot_do_names_the_fix():
    with pytest.raises(
        RecoverlibError,
        match=r"Tesla T4 \(compute capability 7.5\) cannot compute in bfloat16.*"
        r"--dtype float16",
    ):
        resolve_dtype("bfloat16", T4X2)
    assert resolve_dtype("float32", T4X2) == "float32"
    with pytest.raises(RecoverlibError, match="choose one of auto"):
        resolve_dtype("half", CPU)


def test_tensor_parallel_beyond_the_gpus_is_refused():
    check_vllm_settings(EngineConfig(tensor_parallel_size=2), T4X2, 16)
    with pytest.raises(
        RecoverlibError, match="needs 4 GPUs; this machine has 2: use --tensor-parallel-size 2"
    ):
        check_vllm_settings(EngineConfig(tensor_parallel_size=4), T4X2, 16)


def test_gpu_settings_on_cpu_are_refused():
    with pytest.raises(RecoverlibError, match="--gpu-memory-utilization applies to GPUs.*--kv-cache-gib"):
        check_vllm_settings(EngineConfig(gpu_memory_utilization=0.8), CPU, 2)
    check_vllm_settings(EngineConfig(tensor_parallel_size=2), CPU, 2)
    with pytest.raises(RecoverlibError, match="has 2: use --tensor-parallel-size 2 or fewer"):
        check_vllm_settings(EngineConfig(tensor_parallel_size=3), CPU, 2)


def test_cpu_thread_binding_splits_cores_per_rank():
    assert cpu_thread_binding(2, [1, 0]) == "0|1"
    assert cpu_thread_binding(2, [0, 1, 2, 3, 4]) == "0,1|2,3"


def test_config_validation():
    for bad in ({"tensor_parallel_size": 0}, {"gpu_memory_utilization": 1.5}, {"max_loras": 0}):
        with pytest.raises(RecoverlibError):
            EngineConfig(**bad)


def test_preset_then_explicit_values_on_top():
    config = engine_config_with("kaggle-t4x2", max_model_len=None, tensor_parallel_size=1)
    preset = ENGINE_PRESETS["kaggle-t4x2"]
    assert config.tensor_parallel_size == 1  # given explicitly
    assert config.dtype == "float16" and not config.custom_all_reduce  # from the preset
    assert config.max_model_len == preset["max_model_len"]  # None = not given
    check_vllm_settings(engine_config_with("kaggle-t4x2"), T4X2, 4)
    resolve_dtype(engine_config_with("kaggle-t4x2").dtype, T4X2)  # the preset is valid on its machine
    with pytest.raises(RecoverlibError, match="preset 'nope': choose one of kaggle-t4x2"):
        engine_config_with("nope")
