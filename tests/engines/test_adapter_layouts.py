"""Adapters in every layout PEFT has written for Mixtral, each made by the library that writes it, recognised
from their files and served exactly by both engines (issue 29).

The reference is independent of recoverlib's merge: :func:`benchmarks.adapter_formats.hand_merge` adds
``alpha / r * B @ A`` to the base's tensors by plain arithmetic. The transformers-4 adapter is written by
transformers 4 + PEFT 0.17 in an environment of their own, built once per machine (skipped, with the reason,
where no package index can be reached).
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.adapter_formats import hand_merge
from recoverlib.adapters import check_adapters, read_adapter, swap_merge_problem
from recoverlib.engines import EngineConfig, SamplingConfig, make_engine
from recoverlib.engines.device import Device
from recoverlib.engines.vllm_setup import ModelFacts, dynamic_problem, plan_vllm
from recoverlib.errors import RecoverlibError
from recoverlib.tiny.peft_layouts import LAYOUT_TARGETS, make_layout_adapter, make_tf4_adapters, tf4_env
from tests.engines.conftest import render

GREEDY = SamplingConfig(samples=1, temperature=0, max_new_tokens=12)
GPU = Device(gpus=1, capability=(9, 0), memory_bytes=80 * 10**9, name="H100")
TF5_LAYOUTS = ("linear", "fused", "split", "dora")


@pytest.fixture(scope="session")
def tf4(tmp_path_factory):
    try:
        return tf4_env()
    except RecoverlibError as err:
        pytest.skip(f"no transformers-4 environment here: {err}")


@pytest.fixture(scope="session")
def layouts(tiny_model, tmp_path_factory) -> dict:
    """One adapter per transformers-5 layout, written by this environment's PEFT (sigma 0.1: A and B)."""
    root = tmp_path_factory.mktemp("layouts")
    return {name: make_layout_adapter(tiny_model, root / name, name, seed=i + 1)
            for i, name in enumerate(TF5_LAYOUTS)}


@pytest.fixture(scope="session")
def tf4_adapters(tiny_model, tf4, tmp_path_factory):
    """Written by transformers 4 + PEFT in one process: ``published`` (q/k/v/o + w1/w2/w3 + the router
    gate) and ``w1`` (LoRA on w1 alone)."""
    root = tmp_path_factory.mktemp("tf4")
    jobs = [{"out": root / "published", "targets": LAYOUT_TARGETS["published"][0], "seed": 7},
            {"out": root / "w1", "targets": ["w1"], "seed": 3}]
    return dict(zip(("published", "w1"), make_tf4_adapters(tiny_model, jobs), strict=True))


@pytest.fixture(scope="session")
def published(tf4_adapters):
    return tf4_adapters["published"]


@pytest.fixture(scope="session")
def references(tiny_model, layouts, published, tmp_path_factory):
    root = tmp_path_factory.mktemp("refs")
    both = {**layouts, "published": published}
    return {name: hand_merge(tiny_model, both[name], root / name)
            for name in ("linear", "fused", "split", "published")}


def test_every_layout_is_recognised(published, layouts):
    cfg = json.loads((published / "adapter_config.json").read_text())
    assert cfg["target_modules"] and not cfg.get("target_parameters")  # what transformers 4 + PEFT wrote
    info = read_adapter("p", published)
    assert info.layout == "published" and info.groups == {"attention", "experts", "router"}
    assert len(info.modules) == 2 * (4 + 4 * 3 + 1)  # 2 layers: q/k/v/o, 4 experts x w1/w2/w3, the router
    assert "model.layers.1.block_sparse_moe.experts.3.w2" in info.modules
    fused, split = read_adapter("f", layouts["fused"]), read_adapter("s", layouts["split"])
    assert fused.layout == "fused" and fused.groups == {"attention", "experts"}
    assert split.layout == "split" and split.groups == {"attention", "experts", "router"}
    assert set(split.modules) == set(info.modules)  # the same modules, whatever the layout calls them
    assert read_adapter("l", layouts["linear"]).layout == "linear"
    assert swap_merge_problem(fused) is None and swap_merge_problem(info) is None
    assert "use_dora" in swap_merge_problem(read_adapter("d", layouts["dora"]))


def test_fused_pairs_are_peft_s_own_per_expert_deltas(tiny_model, layouts):
    """Slicing transformers 5's fused LoRA into per-expert pairs loses nothing: each pair's product equals
    PEFT's ParamWrapper delta for that expert (gate rows, then up rows)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from recoverlib.adapter_layouts import read_pairs

    info = read_adapter("f", layouts["fused"])
    pairs = read_pairs(info.path, info.pieces)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                                     str(info.path))
    experts = peft.base_model.model.model.layers[1].mlp.experts
    down, gate_up = experts.get_delta_weight("default"), experts.base_layer.get_delta_weight("default")
    scale = 16 / 8
    for e in range(4):
        block = f"model.layers.1.block_sparse_moe.experts.{e}"
        ours = {p: scale * pairs[f"{block}.{p}"][1] @ pairs[f"{block}.{p}"][0] for p in ("w1", "w2", "w3")}
        torch.testing.assert_close(torch.cat([ours["w1"], ours["w3"]]), gate_up[e], rtol=0, atol=1e-6)
        torch.testing.assert_close(ours["w2"], down[e], rtol=0, atol=1e-6)


def test_conversions_round_trip_bit_for_bit(published):
    from safetensors.torch import load_file

    info = read_adapter("p", published)
    split = read_adapter("s", info.served_path("split"))
    assert split.layout == "split" and info.served_path("published") == info.path
    back = read_adapter("b", split.served_path("published"))
    original, again = load_file(published / "adapter_model.safetensors"), load_file(
        back.path / "adapter_model.safetensors")
    assert original.keys() == again.keys()
    assert all(torch.equal(original[k], again[k]) for k in original)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("mode", ["dynamic", "merged"])
def test_hf_engine_serves_every_layout_like_the_hand_merge(tiny_model, layouts, published, references, mode):
    """All four plain layouts in one engine (one PeftModel on a split-expert model, or swapped weights):
    each adapter's logits are the hand-merged model's, float32."""
    from transformers import AutoModelForCausalLM

    adapters = {**{k: v for k, v in layouts.items() if k != "dora"}, "published": published}
    ids = torch.randint(3, 2000, (2, 24), generator=torch.Generator().manual_seed(0))
    base = _logits(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval(), ids)
    with make_engine("hf", tiny_model, adapters, EngineConfig(dtype="float32", lora_mode=mode)) as eng:
        with eng._adapter_context(None):
            torch.testing.assert_close(_logits(eng.model, ids), base, rtol=0, atol=1e-5)
        for name in sorted(adapters):
            reference = AutoModelForCausalLM.from_pretrained(references[name], dtype=torch.float32).eval()
            ref = _logits(reference, ids)
            with eng._adapter_context(name):
                got = _logits(eng.model, ids)
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)
            assert (ref - base).abs().max() > 0.1, name  # the adapter matters


def test_a_peft_fused_conversion_gap_is_served_too(tiny_model, tf4_adapters, tmp_path):
    """PEFT's own transformers-4 -> 5 conversion refuses LoRA on w1 without w3 (both fuse into gate_up_proj);
    on split experts it is plain LoRA."""
    only_w1 = tf4_adapters["w1"]
    ref = hand_merge(tiny_model, only_w1, tmp_path / "ref")
    ids = torch.randint(3, 2000, (1, 16), generator=torch.Generator().manual_seed(1))
    from transformers import AutoModelForCausalLM

    cfg = EngineConfig(dtype="float32", lora_mode="dynamic")
    with make_engine("hf", tiny_model, {"w1": only_w1}, cfg) as eng, eng._adapter_context("w1"):
        got = _logits(eng.model, ids)
    want = _logits(AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32), ids)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_vllm_on_cpu_serves_expert_layouts_merged_as_the_hand_merge(tiny_model, layouts, published,
                                                                    references, rows):
    """vLLM's CPU LoRA cannot touch experts: the adapters are merged into whole checkpoints for fresh
    engines. Its greedy predictions equal vLLM's on the hand-merged checkpoint, row for row, and differ from
    the base."""
    pytest.importorskip("vllm", reason="vLLM is not installed")
    adapters = {"published": published, "fused": layouts["fused"], "split": layouts["split"]}
    cfg = EngineConfig(dtype="float32", lora_mode="merged")
    with make_engine("vllm", tiny_model, adapters, cfg) as eng:
        assert eng.setup.restart_adapters == set(adapters)
        got = eng.generate(render(eng, rows), GREEDY, [None, *sorted(adapters)])
    for name in adapters:
        with make_engine("vllm", references[name], {}, cfg) as eng:
            want = eng.generate(render(eng, rows), GREEDY, [None])[None]
        assert got[name] == want, name
        assert sum(g != b for g, b in zip(got[name], got[None], strict=True)) >= len(rows) - 1


def test_vllm_refuses_expert_lora_on_cpu_and_dora_anywhere_before_start(tiny_model, layouts, published):
    infos = {a.name: a for a in check_adapters(tiny_model, {"p": published, "d": layouts["dora"]})}
    assert "MoE expert weights or the router" in dynamic_problem({"p": infos["p"]}, Device())
    assert dynamic_problem({"p": infos["p"]}, GPU) is None  # vLLM's fused-MoE LoRA on a GPU
    assert "DoRA, which vLLM does not serve as LoRA" in dynamic_problem({"d": infos["d"]}, GPU)
    auto = plan_vllm(EngineConfig(lora_mode="auto"), GPU, {"d": infos["d"]}, ModelFacts(tiny_model))
    assert auto.lora_mode == "merged" and auto.restart_adapters == {"d"}  # merged through PEFT, whole


def test_vllm_on_a_gpu_gets_the_published_names_and_the_experts_target(tiny_model, layouts, published):
    """vLLM 0.32's Mixtral packs ``experts.E.w1/w2/w3`` LoRA into its ``experts`` module: the target list must
    name ``experts`` (``w1`` would leave the experts without LoRA, silently) and ``gate`` for the router; a
    fused or split adapter is given to it converted to the published names, which vLLM's own loader reads."""
    vllm_lora = pytest.importorskip("vllm.lora.lora_model", reason="vLLM is not installed")
    from vllm.lora.peft_helper import PEFTHelper

    infos = {a.name: a for a in check_adapters(tiny_model, {"p": published, "f": layouts["fused"],
                                                            "s": layouts["split"]})}
    setup = plan_vllm(EngineConfig(lora_mode="dynamic"), GPU, infos, ModelFacts(tiny_model))
    targets = setup.llm_kwargs["lora_target_modules"]
    assert targets == ["experts", "gate", "k_proj", "o_proj", "q_proj", "v_proj"]
    expected = {"q_proj", "k_proj", "v_proj", "o_proj", "gate", "experts",
                *(f"experts.{e}.{w}" for e in range(4) for w in ("w1", "w2", "w3"))}
    for name, info in infos.items():
        folder = info.served_path("published")
        helper = PEFTHelper.from_local_dir(str(folder), 1024)
        model = vllm_lora.LoRAModel.from_local_checkpoint(str(folder), expected, helper, device="cpu")
        assert set(model.loras) == set(info.modules), name  # vLLM's own parse: every pair, by its name
        w1 = model.loras["model.layers.0.block_sparse_moe.experts.2.w1"]
        assert tuple(w1.lora_a.shape) == (8, 128) and tuple(w1.lora_b.shape) == (256, 8)


def test_an_adapter_for_another_model_is_one_line_with_the_evidence(tiny_model, published, tmp_path, capsys):
    from recoverlib.tiny import make_tiny
    from recoverlib.tiny.model import TinySpec

    two = make_tiny(tmp_path / "two", adapters=0, spec=TinySpec(num_local_experts=2)) / "model"
    with pytest.raises(RecoverlibError, match=r"base model has no module model\.layers\.0\.block_sparse_moe\."
                       r"experts\.2\.w1 \(the base has 2 experts per layer; adapter for another model\?\)"):
        check_adapters(two, {"p": published})
    from recoverlib.cli import main

    capsys.readouterr()  # make_tiny's progress
    assert main(["inspect", str(published), "--model", str(two)]) == 2  # the CLI: the same line, exit 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the base has 2 experts per layer" in err[0], err
    wide = make_tiny(tmp_path / "wide", adapters=0, spec=TinySpec(intermediate_size=512)) / "model"
    with pytest.raises(RecoverlibError, match=r"lora_B of model\.layers\.0\.block_sparse_moe\.experts\.0\.w1"
                       r" is \(256, 8\) but the base's w1 gives 512 outputs"):
        check_adapters(wide, {"p": published})


def test_an_expert_adapter_on_a_dense_base_is_refused(published, tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    dense = tmp_path / "mistral"
    config = MistralConfig(vocab_size=2048, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=64)
    MistralForCausalLM(config).save_pretrained(dense)
    with pytest.raises(RecoverlibError, match="on Mixtral's experts .* but the base is a mistral"):
        check_adapters(dense, {"p": published})


def test_inspect_says_what_an_adapter_targets_and_how_each_engine_serves_it(tiny_model, published, capsys):
    from recoverlib.cli import main

    assert main(["inspect", str(published), "--model", str(tiny_model)]) == 0
    text = capsys.readouterr().out
    assert "layout   published: per-expert names of transformers 4" in text
    assert "experts       24 modules: w1, w2, w3 of 4 experts in 2 layers" in text
    assert "router         2 modules: gate in 2 layers" in text
    assert "every LoRA pair fits its module" in text
    assert main(["inspect", str(published), "--model", str(tiny_model), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    routes = {r["engine"]: r for r in data["serving"]}
    assert routes["vllm on this CPU"]["dynamic"].startswith("refused: ")
    assert routes["vllm on this CPU"]["auto"] == "merged"
    assert "fresh engine" in routes["vllm on this CPU"]["merged"]
    assert "fused-MoE LoRA" in routes["vllm on a GPU"]["dynamic"]
    assert routes["hf"]["auto"] == "merged" and "split" not in routes["hf"]["merged"]
    assert data["targets"]["experts"]["experts"] == [0, 1, 2, 3]


def test_inspect_without_a_base_says_it_did_not_check(published, capsys):
    from recoverlib.cli import main

    assert main(["inspect", str(published)]) == 0
    assert "base     not checked (give --model BASE)" in capsys.readouterr().out


@pytest.mark.slow
def test_transformers_4_expert_adapter_on_the_trained_model_matches_the_hand_merge(tf4, tmp_path_factory):
    """The measure of issue 29 on the trained tiny model and its validation rows: the adapter changes most
    greedy predictions of the base, and both engines' predictions equal the hand merge's on >= 90% of rows."""
    from recoverlib.io import read_rows
    from recoverlib.tiny import make_trained_tiny

    trained = make_trained_tiny(tmp_path_factory.mktemp("trained"), adapters=2)
    work = tmp_path_factory.mktemp("t4")
    # sigma 0.07 at rank 8: most greedy predictions change and stay fluent (0.1: garbage)
    adapter = make_layout_adapter(trained / "model", work / "published", "published", sigma=0.07, seed=11)
    ref = hand_merge(trained / "model", adapter, work / "ref")
    rows = read_rows(trained / "task" / "validation.csv")[:60]
    engines = ["hf"] + (["vllm"] if _has_vllm() else [])
    for engine in engines:
        cfg = EngineConfig(dtype="float32", lora_mode="dynamic" if engine == "hf" else "merged",
                           merge_cache=str(work / "merged"))
        with make_engine(engine, trained / "model", {"p": adapter}, cfg) as eng:
            got = eng.generate(render(eng, rows), GREEDY, [None, "p"])
        with make_engine(engine, ref, {}, cfg) as eng:
            want = eng.generate(render(eng, rows), GREEDY, [None])[None]
        same = sum(g == w for g, w in zip(got["p"], want, strict=True))
        changed = sum(w != b for w, b in zip(want, got[None], strict=True))
        print(f"{engine}: {same} of {len(rows)} rows equal to the hand merge; the adapter changed {changed}")
        assert changed > len(rows) // 2, "the adapter must change most predictions, else this proves nothing"
        assert same >= 0.9 * len(rows)


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def test_whole_merge_streams_over_a_sharded_base(tiny_model, published, tmp_path):
    """The merged checkpoint for a fresh engine is written shard by shard with the base's shard names and a
    rewritten index (Mixtral-8x7B: 19 shards); every tensor equals the hand merge's."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from recoverlib.engines.merge import merge_checkpoint

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).save_pretrained(
        sharded, max_shard_size="1MB")
    for f in tiny_model.iterdir():
        if f.name.startswith(("tokenizer", "chat_template")):
            (sharded / f.name).write_bytes(f.read_bytes())
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) > 2
    info = check_adapters(sharded, {"p": published})[0]
    out = merge_checkpoint(sharded, info, tmp_path / "merged", torch.float32)
    assert sorted(p.name for p in out.glob("*.safetensors")) == shards
    index = json.loads((out / "model.safetensors.index.json").read_text())
    merged = {k: v for s in shards for k, v in load_file(out / s).items()}
    assert set(index["weight_map"]) == set(merged)
    want = load_file(hand_merge(tiny_model, published, tmp_path / "ref") / "model.safetensors")
    assert set(want) == set(merged)
    assert all(torch.equal(merged[k], want[k].to(torch.float32)) for k in want), "not W + s * B @ A"


@pytest.mark.slow
def test_expert_adapters_on_a_4bit_base_reach_each_quantized_expert(tiny_model, layouts, published, tmp_path):
    """The seed's setting with experts targeted: a bitsandbytes NF4 base (recoverlib's, experts split and
    quantized) and adapters in transformers 4's and 5's layouts; PEFT puts a LoRA on every 4-bit expert."""
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    from recoverlib.quant.api import quantize

    base = quantize(tiny_model, "bnb-nf4", tmp_path / "nf4", progress=False)
    adapters = {"p": published, "f": layouts["fused"]}
    ids = torch.randint(3, 2000, (1, 16), generator=torch.Generator().manual_seed(2))
    with make_engine("hf", base, adapters, EngineConfig(lora_mode="dynamic")) as eng:
        modules = dict(eng.model.named_modules())
        expert = "base_model.model.model.layers.1.mlp.experts.3.down_proj"
        assert type(modules[f"{expert}.base_layer"]).__name__ == "Linear4bit"
        assert {"p", "f"} <= set(modules[f"{expert}.lora_A"].keys())
        with eng._adapter_context(None):
            base_logits = _logits(eng.model, ids)
        for name in adapters:
            with eng._adapter_context(name):
                assert (_logits(eng.model, ids) - base_logits).abs().max() > 0.1, name


def test_dora_on_experts_is_served_by_peft_s_layers_and_its_merge_refused_in_one_line(tiny_model, tmp_path):
    from recoverlib.engines.merge import MergeCache
    from recoverlib.tiny.peft_layouts import make_tf5_adapter

    dora = make_tf5_adapter(tiny_model, tmp_path / "dora", ["gate_proj", "down_proj"], dora=True, split=True)
    info = check_adapters(tiny_model, {"d": dora})[0]
    assert info.layout == "split" and info.targets_experts
    with pytest.raises(RecoverlibError, match="use_dora set.*serve it with --engine hf --lora-mode dynamic"):
        MergeCache(tiny_model, tmp_path / "cache").model_folder(info, torch.float32)
    with make_engine("hf", tiny_model, {"d": dora}, EngineConfig()) as eng:
        assert eng.lora_mode == "dynamic"  # PEFT's DoRA layers on the split experts
        ids = torch.randint(3, 2000, (1, 8), generator=torch.Generator().manual_seed(4))
        with eng._adapter_context(None):
            base = _logits(eng.model, ids)
        with eng._adapter_context("d"):
            assert (_logits(eng.model, ids) - base).abs().max() > 0.01
