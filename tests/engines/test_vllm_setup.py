"""VLLMEngine's decisions as a pure function of (settings, device, adapters, model): tests call it
directly."""

from __future__ import annotations

import pytest

from recoverlib.adapters import check_adapters
from recoverlib.engines import EngineConfig
from recoverlib.engines.device import Device
from recoverlib.engines.vllm_setup import GROUPED_CURE, MOE_CURE, ModelFacts, lora_rank_slot, plan_vllm
from recoverlib.errors import RecoverlibError

CPU = Device()
BOTH = frozenset({MOE_CURE, GROUPED_CURE})


@pytest.fixture(scope="module")
def adapters(tiny_model, tiny_adapters):
    return {a.name: a for a in check_adapters(tiny_model, tiny_adapters)}


def test_cpu_defaults(tiny_model, adapters):
    setup = plan_vllm(
        EngineConfig(lora_mode="dynamic"),
        CPU,
        adapters,
        ModelFacts(tiny_model, native_max_len=1024),
        BOTH,
        cores=(0, 1),
    )
    kw = setup.llm_kwargs
    assert (setup.lora_mode, setup.dtype, setup.max_model_len) == ("dynamic", "bfloat16", 1024)
    assert (
        kw["enable_lora"]
        and kw["max_lora_rank"] == 16
        and kw["lora_target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    )
    assert (kw["max_num_seqs"], kw["max_num_batched_tokens"], kw["enforce_eager"]) == (2048, 65536, True)
    assert kw["block_size"] == 32  # shared prefixes of a request's samples: whole 32-token blocks, not 128
    assert kw["enable_chunked_prefill"] is False  # seeded sampling on a CPU generator
    assert setup.env == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    assert not setup.separate_base
    with pytest.raises(RecoverlibError, match="block size 48: vLLM's CPU attention takes multiples of 32"):
        plan_vllm(EngineConfig(block_size=48), CPU, {}, ModelFacts(tiny_model), BOTH)


def test_without_the_grouped_lora_cure_base_requests_are_batched_apart(tiny_model, adapters):
    setup = plan_vllm(
        EngineConfig(lora_mode="dynamic"), CPU, adapters, ModelFacts(tiny_model), frozenset({MOE_CURE})
    )
    assert setup.separate_base
    no_adapters = plan_vllm(EngineConfig(), CPU, {}, ModelFacts(tiny_model), frozenset({MOE_CURE}))
    assert not no_adapters.separate_base and "enable_lora" not in no_adapters.llm_kwargs


def test_lora_on_a_moe_model_without_the_moe_kernel_cure_is_one_line(tiny_model, adapters):
    with pytest.raises(
        RecoverlibError, match="Triton MoE kernel .*RECOVERLIB_VLLM_PLUGIN=0.*--lora-mode merged"
    ):
        plan_vllm(EngineConfig(lora_mode="dynamic"), CPU, adapters, ModelFacts(tiny_model), frozenset())
    merged = plan_vllm(EngineConfig(lora_mode="merged"), CPU, adapters, ModelFacts(tiny_model), frozenset())
    assert merged.lora_mode == "merged" and "enable_lora" not in merged.llm_kwargs


def test_refusals_before_any_engine(tiny_model, adapters):
    with pytest.raises(RecoverlibError, match="lora mode merged: the base is quantized"):
        plan_vllm(
            EngineConfig(lora_mode="merged"), CPU, adapters, ModelFacts(tiny_model, quantized=True), BOTH
        )
    with pytest.raises(RecoverlibError, match=r"exceeds the engine's max_lora_rank 8: tiny-c \(r=16\)"):
        plan_vllm(
            EngineConfig(lora_mode="dynamic", max_lora_rank=8), CPU, adapters, ModelFacts(tiny_model), BOTH
        )
    with pytest.raises(RecoverlibError, match="has 2: use --tensor-parallel-size 2"):
        plan_vllm(EngineConfig(tensor_parallel_size=3), CPU, {}, ModelFacts(tiny_model), BOTH, cores=(0, 1))
    assert lora_rank_slot(2) == 8 and lora_rank_slot(16) == 16
    with pytest.raises(RecoverlibError, match="largest max_lora_rank 512"):
        lora_rank_slot(1024)


def test_cpu_tensor_parallel_binds_ranks_to_cores(tiny_model):
    setup = plan_vllm(
        EngineConfig(tensor_parallel_size=2), CPU, {}, ModelFacts(tiny_model), BOTH, cores=(1, 0)
    )
    assert (
        setup.env["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
        and setup.llm_kwargs["distributed_executor_backend"] == "mp"
    )


def test_a_multiprocess_cpu_engine_gets_every_core(tiny_model):
    # vLLM's auto binding would keep one of the two cores for its scheduler process
    setup = plan_vllm(EngineConfig(multiprocess=True), CPU, {}, ModelFacts(tiny_model), BOTH, cores=(1, 0))
    assert setup.env["VLLM_CPU_OMP_THREADS_BIND"] == "0,1"
    in_process = plan_vllm(EngineConfig(), CPU, {}, ModelFacts(tiny_model), BOTH, cores=(0, 1))
    assert "VLLM_CPU_OMP_THREADS_BIND" not in in_process.env


def test_gpus_keep_vllms_block_size(tiny_model, adapters):
    """32-token blocks are a CPU choice; on a GPU vLLM's own (16) stays unless asked."""
    t4 = Device(gpus=1, capability=(7, 5), memory_bytes=15 * 10**9, name="Tesla T4")
    facts = ModelFacts(tiny_model, native_max_len=1024)
    setup = plan_vllm(EngineConfig(lora_mode="dynamic"), t4, adapters, facts, BOTH)
    assert "block_size" not in setup.llm_kwargs
    asked = plan_vllm(EngineConfig(block_size=32), t4, adapters, facts, BOTH)
    assert asked.llm_kwargs["block_size"] == 32
