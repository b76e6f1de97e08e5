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
    for fn in (
        FusedMoEConfig.__post_init__,
        PunicaWrapperCPU._shrink_decode,
        PunicaWrapperCPU._expand_slice_prefill,
    ):
        assert fn._recoverlib
        assert not getattr(fn.__wrapped__, "_recoverlib", False)  # wrapped once, not twice


def test_plugin_is_off_with_its_environment_variable(monkeypatch):
    import recoverlib.vllm_plugin as plugin

    called = []
    monkeypatch.setattr(plugin, "CURES", {name: lambda n=name: called.append(n) for name in plugin.CURES})
    monkeypatch.setenv(plugin.DISABLE_ENV, "0")
    assert plugin.register() == [] and called == []
    monkeypatch.delenv(plugin.DISABLE_ENV)
    assert plugin.register() == list(plugin.CURES) and called == list(plugin.CURES)


def test_another_vllm_version_keeps_vllms_code(monkeypatch, caplog):
    import recoverlib.patches as patches
    import recoverlib.vllm_plugin as plugin

    called = []
    monkeypatch.setattr(plugin, "CURES", {name: lambda n=name: called.append(n) for name in plugin.CURES})
    monkeypatch.setattr(patches, "installed_version", lambda dist: "9.9.9")
    patches.version_matches.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="recoverlib"):
            assert plugin.register() == [] and called == []
    finally:
        patches.version_matches.cache_clear()
    # one warning, not one per cure
    assert sum("tested on 0.32.0" in r.getMessage() for r in caplog.records) == 1


def test_a_failing_cure_is_skipped_and_the_others_stay(monkeypatch, caplog):
    import recoverlib.vllm_plugin as plugin

    def broken():
        raise AttributeError("type object 'PunicaWrapperCPU' has no attribute '_shrink_decode'")

    cures = dict.fromkeys(plugin.CURES, lambda: None)
    cures["vllm-grouped-lora"] = broken
    monkeypatch.setattr(plugin, "CURES", cures)
    with caplog.at_level("WARNING", logger="recoverlib"):
        installed = plugin.register()
    assert installed == [n for n in cures if n != "vllm-grouped-lora"]
    assert any("vllm-grouped-lora not applied" in r.getMessage() for r in caplog.records)


def test_every_patch_names_its_tested_version():
    from recoverlib.patches import PATCHES, table

    assert all(p.tested[0].isdigit() for p in PATCHES.values())
    assert table().count("\n") == len(PATCHES) + 1


def test_the_cures_the_environment_chooses():
    from recoverlib.vllm_plugin import CURES, chosen_cures

    assert chosen_cures(None) == chosen_cures("1") == list(CURES)
    assert chosen_cures("0") == []
    assert chosen_cures("vllm-top-p, vllm-cpu-moe-kernel") == ["vllm-cpu-moe-kernel", "vllm-top-p"]
