import pytest

from recoverlib.vllm_plugin import lora_targets_experts

pytest.importorskip("vllm", reason="vLLM is not installed")


@pytest.mark.parametrize(
    ("targets", "experts"),
    [
        (["q_proj", "k_proj", "v_proj", "o_proj"], False),
        (["qkv_proj", "o_proj"], False),
        (["q_proj", "w1"], True),
        (["experts"], True),
        (None, True),  # unknown targets: assume the MoE layers may need LoRA
        ([], True),
    ],
)
def test_expert_targets(targets, experts):
    assert lora_targets_experts(targets) is experts


def test_plugin_is_registered_and_idempotent():
    from importlib.metadata import entry_points

    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
    from vllm.model_executor.layers.fused_moe.config import FusedMoEConfig

    from recoverlib.vllm_plugin import register

    names = {ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert "recoverlib.vllm_plugin:register" in names
    register()
    register()
    for fn in (FusedMoEConfig.__post_init__, PunicaWrapperCPU._shrink_decode, PunicaWrapperCPU._expand_slice_prefill):
        assert fn._recoverlib
        assert not getattr(fn.__wrapped__, "_recoverlib", False)  # wrapped once, not twice
