"""A GPTQ checkpoint from ``recoverlib quantize`` served by vLLM: loaded by vLLM's own ``LLM(path)`` with
recoverlib's plugin off, two adapters mixed with base requests through ``VLLMEngine``, and (trained tiny
model) greedy predictions that agree with the HF engine on the same checkpoint.

Which plans run here is decided by the same rule ``predict`` uses (:mod:`recoverlib.engines.vllm_support`): a
GPTQ checkpoint whose experts are 16-bit needs vLLM's int4 GEMM (AVX-512 CPUs, GPUs); ``gptq-4`` also needs
its int4 MoE kernel (AMX CPUs, GPUs). Elsewhere these tests skip with that reason; where the kernels exist
they must pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from recoverlib.engines import EngineConfig, SamplingConfig
from recoverlib.quant.plan import PRESETS, GroupPrecision, PrecisionPlan

pytest.importorskip("vllm", reason="vLLM is not installed")

# Attention in 4 bits, experts 16-bit: the part of GPTQ an AVX-512 CPU without AMX serves.
ATTN4 = PrecisionPlan("gptq", attention=GroupPrecision(4, 128), name="gptq-attn4")
PLANS = {"gptq-attn4": ATTN4, "gptq-4": PRESETS["gptq-4"]}
GREEDY = SamplingConfig(samples=1, temperature=0, max_new_tokens=12)


@pytest.fixture(scope="module")
def kernels():
    from recoverlib.engines.vllm_support import probe_vllm_kernels

    return probe_vllm_kernels()


def servable(name: str, kernels):
    """The plan, or a skip naming what this machine's vLLM lacks for it."""
    from recoverlib.engines.vllm_support import ServedWeights, vllm_problem

    problem = vllm_problem(ServedWeights.from_plan(PLANS[name], name), kernels)
    if problem:
        pytest.skip(problem)
    return PLANS[name]


@pytest.fixture(scope="module")
def gptq_dir(tiny_model, tmp_path_factory):
    """``gptq_dir(name)``: the tiny model quantized by ``recoverlib quantize`` with that plan (made once)."""
    from recoverlib.quant.api import quantize

    made: dict = {}
    root = tmp_path_factory.mktemp("gptq")

    def get(name: str):
        if name not in made:
            made[name] = quantize(tiny_model, PLANS[name], root / name, progress=False)
        return made[name]

    return get


LOAD_WITH_VLLM_ALONE = """
import json, os, sys
os.environ["RECOVERLIB_VLLM_PLUGIN"] = "0"  # vLLM as it is, recoverlib's plugin off
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
from vllm import LLM, SamplingParams
llm = LLM(sys.argv[1], dtype="bfloat16", max_model_len=256, enforce_eager=True, seed=0)
outs = llm.generate([{"prompt_token_ids": [1, 50, 60, 70, 80]}], SamplingParams(max_tokens=6, temperature=0))
kernel = llm.apply_model(lambda m: type(m.model.layers[0].self_attn.qkv_proj.quant_method.kernel).__name__)[0]
print("TOKENS", json.dumps({"tokens": list(outs[0].outputs[0].token_ids), "kernel": kernel}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PLANS))
def test_vllm_loads_the_checkpoint_as_written(name, kernels, gptq_dir):
    servable(name, kernels)
    folder = gptq_dir(name)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    res = subprocess.run(
        [sys.executable, "-c", LOAD_WITH_VLLM_ALONE, str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.split("TOKENS", 1)[1])
    assert len(got["tokens"]) == 6
    print(f"{name}: vLLM's attention kernel {got['kernel']}")
    assert got["kernel"] == "CPUWNA16LinearKernel" or kernels.platform != "cpu"  # vLLM's own int4 kernel


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PLANS))
def test_two_adapters_mixed_with_base_requests(name, kernels, gptq_dir, tiny_adapters, rows):
    from recoverlib.engines.vllm import VLLMEngine
    from tests.engines.conftest import render

    servable(name, kernels)
    adapters = {k: tiny_adapters[k] for k in ("tiny-a", "tiny-b")}
    with VLLMEngine(gptq_dir(name), adapters, EngineConfig(lora_mode="auto")) as engine:
        assert engine.lora_mode == "dynamic"  # merging into a quantized base is not exact
        prompts = render(engine, rows)
        mixed = engine.generate(prompts, GREEDY, [None, "tiny-a", "tiny-b"])
        for adapter in (None, "tiny-a", "tiny-b"):
            assert engine.generate(prompts, GREEDY, [adapter])[adapter] == mixed[adapter], adapter
        assert mixed["tiny-a"] != mixed[None] and mixed["tiny-b"] != mixed[None]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PLANS))
def test_predict_through_vllm_on_the_gptq_base(name, kernels, gptq_dir, tiny_adapters, sample_csv, tmp_path):
    from recoverlib.cli import main

    servable(name, kernels)
    out = tmp_path / "sub.csv"
    argv = [
        "predict",
        "--engine",
        "vllm",
        "--model",
        str(gptq_dir(name)),
        "--adapter",
        f"a={tiny_adapters['tiny-a']}",
        "--adapter",
        f"b={tiny_adapters['tiny-b']}",
        "--samples",
        "2",
        "--max-new-tokens",
        "8",
        "--input",
        str(sample_csv),
        "--out",
        str(out),
        "--samples-file",
        str(tmp_path / "s.jsonl"),
    ]
    assert main(argv) == 0
    lines = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()[1:]]  # 0: settings
    assert lines and all({s["adapter"] for s in line["samples"]} == {"a", "b"} for line in lines)


def test_vllm_refuses_what_this_machine_cannot_run(kernels, fake_quantized):
    """Refused in one line before any engine starts, naming what is missing (or served, where it is not)."""
    from recoverlib.engines.vllm_support import ServedWeights, vllm_problem
    from recoverlib.errors import RecoverlibError

    problem = vllm_problem(ServedWeights.from_folder(fake_quantized), kernels)
    if problem is None:
        pytest.skip(f"this machine's vLLM has the int4 kernels ({kernels.describe()})")
    from recoverlib.engines.vllm import VLLMEngine

    with pytest.raises(RecoverlibError, match="--engine hf") as err:
        VLLMEngine(fake_quantized)
    assert str(err.value) == problem and "\n" not in problem


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PLANS))
def test_greedy_predictions_agree_with_the_hf_engine(name, kernels, tmp_path_factory):
    """The trained tiny model and its two adapters, quantized; vLLM and the HF engine (GPTQModel's torch
    kernel) on the same checkpoint, greedy, on validation rows: they agree on most rows (bf16 near-ties and
    the two engines' different int4 kernels and reduction orders decide the rest)."""
    from recoverlib.io import read_rows
    from recoverlib.pipeline import PredictConfig, predict_rows
    from recoverlib.quant.api import quantize
    from recoverlib.tiny import adapter_paths, make_trained_tiny

    plan = servable(name, kernels)
    trained = make_trained_tiny(tmp_path_factory.mktemp("trained"), adapters=2)
    folder = quantize(trained / "model", plan, tmp_path_factory.mktemp("q") / name, progress=False)
    rows = read_rows(trained / "task" / "validation.csv")[:60]
    config = PredictConfig(GREEDY)
    got = {}
    for engine in ("vllm", "hf"):
        from recoverlib.engines import make_engine

        with make_engine(engine, folder, adapter_paths(trained), EngineConfig(dtype="bfloat16")) as eng:
            got[engine] = [[s.text for s in p.samples] for p in predict_rows(eng, rows, config)]
    same = sum(a == b for a, b in zip(got["vllm"], got["hf"], strict=True))
    print(f"{name}: vLLM and HF engine agree on {same} of {len(rows)} rows (both adapters)")
    assert same >= 0.8 * len(rows)
