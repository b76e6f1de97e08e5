"""Dense bases (Mistral, Llama, Qwen2, Gemma) wherever a Mixtral goes: plans fitted to the model's groups, the
planner's shapes against transformers' own models, and each backend's streamed quantize, audited by group,
loaded and served by the HF engine with a LoRA adapter."""

from __future__ import annotations

import pytest

from recoverlib.architectures import PUBLIC_CONFIGS, public_config
from recoverlib.cli import main
from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import read_config
from recoverlib.quant.plan import PRESETS, GroupPrecision, PrecisionPlan, plan_for_model
from recoverlib.quant.planner import MIXTRAL_8X7B, plan_bytes

from .conftest import ERROR_BOUND

FAMILIES = ("mistral", "llama", "qwen2", "gemma")
G4 = GroupPrecision(4, 64)


def test_a_preset_gives_a_dense_mlp_its_feed_forward_precision():
    for name in ("bnb-nf4", "hqq-attn4-exp2", "gptq-attn8-exp4"):
        dense = plan_for_model(name, public_config("mistral-7b"))
        moe = plan_for_model(name, MIXTRAL_8X7B)
        assert dense.mlp == moe.experts == PRESETS[name].experts and dense.attention == moe.attention
        assert not dense.experts.quantized and not moe.mlp.quantized and dense.name == name


@pytest.mark.parametrize(
    "model, plan, message",
    [
        ("mistral-7b", PrecisionPlan("hqq", experts=G4),
         "gives experts 4-bit g64, but a dense mistral model has no experts: give its feed-forward weights as"
         " mlp"),
        ("mixtral-8x7b", PrecisionPlan("hqq", mlp=G4),
         "gives mlp 4-bit g64, but a mixtral mixture of experts has no mlp: give its feed-forward weights"
         " as experts"),
        ("llama-3-8b", PRESETS["hqq-4+router"], "quantizes the router, but a dense llama model has none"),
        ("gemma-7b", PrecisionPlan("hqq", lm_head=G4), "quantizes lm_head, but a dense gemma model ties it"),
        ("qwen2.5-7b", PrecisionPlan("hqq", experts=G4, mlp=GroupPrecision(2, 16)), "gives experts 4-bit"),
    ],
)
def test_a_plan_naming_groups_the_model_lacks_is_one_line(model, plan, message):
    with pytest.raises(RecoverlibError, match=message) as err:
        plan_bytes(public_config(model), plan)
    assert "\n" not in str(err.value)


def _meta_model(cfg: dict):
    """transformers' own model for ``cfg`` on the meta device (nothing allocated)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**cfg)
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("name", PUBLIC_CONFIGS)
def test_planner_shapes_are_what_transformers_builds(name):
    """Per group, the planner's parameters from config.json alone equal those of transformers' own model of
    that config (q/k/v biases, tied heads, Gemma's head_dim included)."""
    from recoverlib.module_groups import group_of

    cfg = public_config(name)
    counted: dict[str, int] = {}
    model = _meta_model(cfg)
    seen = set()
    for pname, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen or (cfg.get("tie_word_embeddings") and pname == "lm_head.weight"):
            continue
        seen.add(id(p))
        group = group_of(pname.rsplit(".", 1)[0])
        counted[group] = counted.get(group, 0) + p.numel()
    est = plan_bytes(cfg, PrecisionPlan("hqq"))
    assert {g: e.params for g, e in est.groups.items() if e.params} | {"other": est.other_params} == counted


def test_named_dense_configs_match_published_parameter_counts():
    published = {"mistral-7b": 7.24e9, "gemma-7b": 8.54e9, "llama-3-8b": 8.03e9, "qwen2.5-7b": 7.62e9}
    for name, params in published.items():
        est = plan_bytes(public_config(name), PrecisionPlan("hqq"))
        assert est.total_params == pytest.approx(params, rel=2e-3)


@pytest.mark.parametrize("name", [n for n in PUBLIC_CONFIGS if n != "mixtral-8x7b"])
def test_plan_command_for_each_named_dense_model(name, capsys):
    code = main(["plan", name, "--plan", "gptq-4", "--host-memory", "29GB", "--gpus", "1x24GB",
                 "--max-loras", "2", "--lora-targets", "q_proj,v_proj,gate_proj,down_proj"])
    out = capsys.readouterr().out
    weights = plan_bytes(public_config(name), PRESETS["gptq-4"]).total_bytes
    assert code == 0 and f"{weights / 1e9:.2f} GB" in out and "host memory 29GB: fits" in out
    assert "\nvLLM can serve it\n" in out and out.rstrip().splitlines()[-1].startswith("fits")
    assert main(["plan", name, "--plan", "gptq-4", "--gpus", "1x24GB", "--lora-targets", "w1"]) == 2
    assert "a dense model has none; its feed-forward targets are gate_proj" in capsys.readouterr().err


def _cases():
    for family in FAMILIES:
        for preset in ("bnb-nf4", "hqq-4", "gptq-4"):
            # in the default run: qwen2 (q/k/v biases) and gemma (tied head) with every backend, mistral's
            # bnb and hqq; llama is mistral's shape with other names (GPTQ ~20-60 s each)
            slow = family == "llama" or (family, preset) == ("mistral", "gptq-4")
            marks = [pytest.mark.slow] if slow else []
            yield pytest.param(family, preset, marks=marks, id=f"{family}-{preset}")


@pytest.mark.parametrize("family, preset", _cases())
def test_dense_quantize_audit_load_and_serve(family, preset, tiny_dense, tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM

    from recoverlib.engines import EngineConfig, SamplingConfig, make_engine
    from recoverlib.prompt import RecoveryTemplate
    from recoverlib.quant.api import inspect_checkpoint, load_quantized, quantize
    from recoverlib.quant.compare import logits_error

    base, adapter = tiny_dense(family) / "model", tiny_dense(family) / "adapters" / "tiny-a"
    out = quantize(base, preset, tmp_path / "q", progress=False)
    report = inspect_checkpoint(out)
    plan = plan_for_model(preset, read_config(base))
    tied = family == "gemma"
    assert set(report.groups) == {"attention", "mlp", "embeddings"} | (set() if tied else {"lm_head"})
    for g in ("attention", "mlp"):
        got, want = report.groups[g], plan.group(g)
        assert (got.bits, got.group_size, got.quantized) == (want.bits, want.group_size, {True})
    assert report.total_bytes == report.planned_bytes == plan_bytes(base, PRESETS[preset]).total_bytes
    assert report.plan_dict == plan.to_dict() and not plan.experts.quantized
    assert main(["inspect", str(out)]) == 0  # the table by group: mlp, and no experts or router rows
    rows = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert {"attention", "mlp", "embeddings", "other"} <= rows and not rows & {"experts", "router"}
    if preset == "gptq-4":  # as GPTQModel alone writes it (no recoverlib_quant.json): same groups and bytes
        import shutil

        no_meta = shutil.ignore_patterns("recoverlib_quant.json")
        plain = shutil.copytree(out, tmp_path / "plain", ignore=no_meta)
        again = inspect_checkpoint(plain)
        assert {g: (r.params, r.bytes) for g, r in again.groups.items()} == {
            g: (r.params, r.bytes) for g, r in report.groups.items()
        }

    ids = torch.randint(3, 2048, (2, 24), generator=torch.Generator().manual_seed(0))
    ref = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).eval()
    err = logits_error(ref, load_quantized(out), ids)
    assert err["rel_error"] < ERROR_BOUND[4], err

    with make_engine("hf", out, {"a": adapter}, EngineConfig()) as engine:
        template = RecoveryTemplate().for_tokenizer(engine.tokenizer)
        prompts = [template.render(engine.tokenizer, "The cat sat.", "THE CAT SAT.")]
        got = engine.generate(prompts, SamplingConfig(temperature=0, max_new_tokens=6), adapters=[None, "a"])
    assert set(got) == {None, "a"} and got[None] != got["a"]  # the adapter (attention and MLP) is applied
