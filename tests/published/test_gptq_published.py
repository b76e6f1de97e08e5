"""GPTQ checkpoints as GPTQModel publishes them (act-order at every group size, 3/4/8 bits, sym true/false,
static groups, attention only, both Mixtral layouts, AutoGPTQ's ``quantize_config.json``, a dense Mistral):
recognised from their files, served by the HF engine exactly as GPTQModel's own loader reads them, served by
vLLM here or refused in one line with the way out, and converted where that is exact.

The checkpoints are written by GPTQModel in a process of its own (benchmarks/published_checkpoints.py; about 2
minutes once, then cached on disk).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import published_checkpoints as writers
from recoverlib.engines.vllm_support import vllm_problem
from recoverlib.errors import RecoverlibError
from recoverlib.quant.convert import publish_layout
from recoverlib.quant.formats import ServedWeights

pytestmark = pytest.mark.slow

# name -> (group_size, bits, sym, g_idx) as the files must say
EXPECTED = {
    "act-g32": (32, 4, True, "permuted"),
    "act-g-1": (-1, 4, True, None),
    "act-g64": (64, 4, True, "permuted"),
    "act-g128": (128, 4, True, "permuted"),
    "act-3bit": (32, 3, True, "permuted"),
    "act-8bit": (32, 8, True, "permuted"),
    "act-asym": (32, 4, False, "permuted"),
    "static-g32": (32, 4, True, "static"),
}


@pytest.fixture(scope="module")
def kernels():
    pytest.importorskip("vllm")
    from recoverlib.engines.vllm_support import probe_vllm_kernels

    return probe_vllm_kernels()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recognised_from_the_files(name, gptq_written, gptq_published):
    group_size, bits, sym, g_idx = EXPECTED[name]
    for path, layout in ((gptq_written[name], "split"), (gptq_published[name], "published")):
        w = ServedWeights.from_folder(path)
        assert (w.method, w.group_size, w.sym, w.desc_act, w.g_idx) == ("gptq", group_size, sym, True, g_idx)
        assert dict(w.bits) == {"attention": bits, "experts": bits} and w.layout == layout
        assert w.config_file == "config.json" and w.model_type == "mixtral"


def test_attention_only_and_the_old_config_file(gptq_written, tmp_path):
    w = ServedWeights.from_folder(gptq_written["attn-g32"])
    assert dict(w.bits) == {"attention": 4} and not w.desc_act
    # GPTQModel's skip rule matches its own expert names, not vLLM's fused-MoE prefix
    assert dict(w.rule_bits) == {"attention": 4, "experts": 4}
    old = writers.autogptq_layout(gptq_written["attn-g32"], tmp_path / "autogptq")
    assert ServedWeights.from_folder(old).config_file == "quantize_config.json"


def _dequantized(model):
    return {n: m.dequantize_weight().float() for n, m in model.named_modules() if hasattr(m, "qweight")}


# GPTQModel's own load takes about 25 s a checkpoint here: the cases that differ in how weights are stored
@pytest.mark.parametrize("name", ["act-g32", "act-g-1", "act-3bit", "act-8bit", "act-asym"])
def test_hf_engine_reads_what_gptqmodel_reads(name, gptq_written, gptq_published):
    """Every quantized linear, dequantized, equals GPTQModel's own load of the same checkpoint up to its
    fp16 scales rounded to bf16 (GPTQModel casts them), in both layouts; the forward pass runs."""
    import torch

    from recoverlib.engines.hf import load_causal_lm
    from recoverlib.quant.backends.gptq import GptqBackend

    ours = load_causal_lm(gptq_written[name], "bfloat16")
    published = load_causal_lm(gptq_published[name], "bfloat16")
    with GptqBackend().library():  # its patches to transformers undone after (later tests load Mixtrals)
        from gptqmodel import BACKEND, GPTQModel

        ref = GPTQModel.load(str(gptq_written[name]), backend=BACKEND.TORCH, dtype=torch.bfloat16).model
    got, want, same = _dequantized(ours), _dequantized(ref), _dequantized(published)
    assert set(got) == set(want) == set(same)
    assert any(".experts." in n for n in got) != name.startswith("attn")
    for n in want:
        assert torch.equal(got[n], same[n]), n
        assert (got[n] - want[n]).norm() / want[n].norm() < 0.01, n
    ids = torch.randint(3, 2048, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.isfinite(ours(ids).logits).all()


@pytest.mark.parametrize("name", ["act-g64", "act-g128", "static-g32", "attn-act-g32"])
def test_hf_engine_loads_both_layouts_alike(name, gptq_written, gptq_published):
    import torch

    from recoverlib.engines.hf import load_causal_lm

    ids = torch.randint(3, 2048, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = load_causal_lm(gptq_written[name], "bfloat16")(ids).logits
        assert torch.isfinite(ours).all()
        assert torch.equal(ours, load_causal_lm(gptq_published[name], "bfloat16")(ids).logits)


def test_dense_mistral_both_config_files(mistral_gptq, tmp_path):
    """transformers' own GPTQ path (optimum, GPTQModel's kernels) for a dense act-order model, also when the
    config is only in AutoGPTQ's quantize_config.json (transformers alone would load random weights)."""
    import torch

    from recoverlib.engines.hf import load_causal_lm

    w = ServedWeights.from_folder(mistral_gptq)
    assert (w.model_type, w.desc_act, w.g_idx, dict(w.bits)) == ("mistral", True, "permuted",
                                                                  {"attention": 4, "mlp": 4})
    old = writers.autogptq_layout(mistral_gptq, tmp_path / "autogptq")
    ids = torch.randint(3, 2048, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(load_causal_lm(old, "bfloat16")(ids).logits,
                           load_causal_lm(mistral_gptq, "bfloat16")(ids).logits)


def test_every_case_is_served_or_refused_in_one_line(gptq_written, gptq_published, mistral_gptq, kernels):
    """vLLM here: each checkpoint is served or refused before any engine starts, in one line that names the
    way out; the act-order ones refuse on every device."""
    cases = {**{f"{n} (GPTQModel names)": p for n, p in gptq_written.items()},
             **{f"{n} (published names)": p for n, p in gptq_published.items()},
             "mistral act-g32": mistral_gptq}
    for label, path in cases.items():
        w = ServedWeights.from_folder(path)
        problem = vllm_problem(w, kernels)
        if problem is None:
            continue
        assert "\n" not in problem and ("--engine hf" in problem or "recoverlib convert" in problem), label
        if w.g_idx == "permuted":
            assert "act-order" in problem and "re-quantize" in problem, label
    assert vllm_problem(ServedWeights.from_folder(gptq_published["act-g-1"]), kernels) != \
        vllm_problem(ServedWeights.from_folder(gptq_published["act-g32"]), kernels)


def test_convert_is_exact_where_it_can_be(gptq_written, tmp_path):
    from safetensors import safe_open

    from recoverlib.quant.checkpoint import disk_name

    out = publish_layout(gptq_written["static-g32"], tmp_path / "static")
    w = ServedWeights.from_folder(out)
    assert (w.desc_act, w.layout, w.g_idx) == (False, "published", None)
    for config in ("config.json", "quantize_config.json"):
        data = json.loads((out / config).read_text())
        assert data.get("quantization_config", data)["desc_act"] is False
    with safe_open(str(gptq_written["static-g32"] / "model.safetensors"), "pt") as a, \
            safe_open(str(out / "model.safetensors"), "pt") as b:
        import torch

        assert all(torch.equal(a.get_tensor(k), b.get_tensor(disk_name(k))) for k in a.keys())  # noqa: SIM118
    with pytest.raises(RecoverlibError, match="real permutation.*--engine hf.*peaks at about .* GB"):
        publish_layout(gptq_written["act-g32"], tmp_path / "x")
    old = publish_layout(writers.autogptq_layout(gptq_written["attn-g32"], tmp_path / "a"), tmp_path / "b")
    w = ServedWeights.from_folder(old)
    assert w.config_file == "config.json" and "experts" not in w.rule_bits
    with pytest.raises(RecoverlibError, match="vLLM loads it as it is"):
        publish_layout(old, tmp_path / "again")


LOAD_WITH_VLLM_ALONE = """
import json, os, sys
os.environ["RECOVERLIB_VLLM_PLUGIN"] = "0"  # vLLM as it is, recoverlib's plugin off
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
from vllm import LLM, SamplingParams
try:
    llm = LLM(sys.argv[1], dtype="bfloat16", max_model_len=256, enforce_eager=True, seed=0)
except Exception as err:
    print("REFUSED", type(err).__name__, str(err).replace(chr(10), " "))
    raise SystemExit(0)
try:  # vLLM may load what its kernels then cannot run (int4 linear on AVX2 alone): a refusal too
    params = SamplingParams(max_tokens=6, temperature=0)
    outs = llm.generate([{"prompt_token_ids": [1, 50, 60, 70, 80]}], params)
except Exception as err:
    print("REFUSED at the first forward", type(err).__name__, str(err).replace(chr(10), " "))
    raise SystemExit(0)
print("SERVED", json.dumps(list(outs[0].outputs[0].token_ids)))
"""


def _vllm_alone(path) -> str:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    res = subprocess.run([sys.executable, "-c", LOAD_WITH_VLLM_ALONE, str(path)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return next(line for line in res.stdout.splitlines() if line.startswith(("SERVED", "REFUSED")))


def test_vllm_itself_agrees_with_the_rule(gptq_written, gptq_published, kernels, tmp_path):
    """vLLM's own LLM(path): refuses act-order with groups as the rule says, and serves the exact
    conversions of attention-only checkpoints (this CPU's int4 GEMM) where the rule says it can."""
    assert "desc_act=True) is no longer supported" in _vllm_alone(gptq_published["attn-act-g32"])
    for name in ("attn-g32", "attn-static-g32"):
        out = publish_layout(gptq_written[name], tmp_path / name)
        said = _vllm_alone(out)
        problem = vllm_problem(ServedWeights.from_folder(out), kernels)
        assert said.startswith("SERVED") == (problem is None), (name, said, problem)


def test_predict_picks_or_refuses_in_one_line(gptq_published, sample_csv, tmp_path, capsys):
    """The issue's case: an act-order GPTQ Mixtral. ``--engine vllm`` is refused in one line before any
    engine starts; ``--engine auto`` says why it picks the HF engine, which serves it."""
    pytest.importorskip("vllm")
    from recoverlib.cli import main

    model = gptq_published["act-g32"]
    common = ["predict", "--model", str(model), "--input", str(sample_csv), "--samples", "1",
              "--temperature", "0", "--max-new-tokens", "4"]
    assert main([*common, "--engine", "vllm", "--out", str(tmp_path / "v.csv")]) == 2
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("recoverlib: error:")]
    assert len(said) == 1 and "act-order" in said[0] and "--engine hf" in said[0] and "Traceback" not in err
    assert main([*common, "--engine", "auto", "--out", str(tmp_path / "a.csv")]) == 0
    err = capsys.readouterr().err
    assert "engine auto -> hf, since" in err and "act-order" in err
    assert (tmp_path / "a.csv").is_file()


def test_bitsandbytes_saved_by_transformers(tiny_model, tmp_path):
    """transformers' own 4-bit save: the HF engine loads it as transformers does; vLLM refuses in one line."""
    pytest.importorskip("bitsandbytes")
    from recoverlib.engines.hf import load_causal_lm
    from recoverlib.engines.vllm_support import weights_problem

    folder = writers.bnb_checkpoint(tiny_model, tmp_path / "bnb")
    w = ServedWeights.from_folder(folder)
    assert w.method == "bitsandbytes" and w.config_file == "config.json"
    assert "no bitsandbytes" in weights_problem(w) and "--engine hf" in weights_problem(w)
    model = load_causal_lm(folder, "bfloat16")
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
