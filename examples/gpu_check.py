"""Check recoverlib's CUDA paths on a GPU machine, and time HFEngine's two LoRA modes there.

Steps (each reported, a failure does not stop the next): HFEngine on the tiny Mixtral with two adapters, PEFT
layers (``dynamic``) vs merged weights, tokens/s of 48 rows x 2 adapters x 4 samples x 32 tokens; QLoRA
training (4-bit NF4 base through TRL) and serving the adapter; bnb-nf4 / bnb-int8 quantization, loaded and
serving adapters; streaming quantization on the GPU (bnb-nf4, hqq) with sharded output, reloaded onto the
GPU; the vLLM GPTQ path (``gptq-4`` written by ``recoverlib quantize``, loaded by vLLM's own ``LLM(path)``
with recoverlib's plugin off, then served by VLLMEngine with two adapters mixed with base requests, greedy
against the HF engine on the same checkpoint); LoRA on the experts served by vLLM's fused-MoE LoRA
(``vllm_expert_lora``: adapters in transformers 5's fused layout and the split layout, written by PEFT, plus
transformers 4's per-expert layout where its environment can be built; vLLM gets each under Mixtral's
published per-expert names with ``experts``/``gate`` targets; greedy against vLLM on the hand-merged
checkpoint, merged mode and the HF engine beside it); a learned head served by vLLM's pooling runner against
the HF head engine (``vllm_heads``). Writes ``$OUT/gpu_check.json`` (default
``out/gpu_check.json``). On a machine without CUDA the QLoRA step reports its refusal, and
``vllm_expert_lora`` reports vLLM's CPU refusal of expert LoRA (its other routes still run). Run::

    python examples/gpu_check.py [STEP ...]     # steps: hf_modes qlora bnb stream_cuda vllm_gptq
                                                # vllm_expert_lora vllm_heads (default: all)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

import torch

from recoverlib.engines import EngineConfig, SamplingConfig, make_engine
from recoverlib.io import read_rows
from recoverlib.prompt import RecoveryTemplate
from recoverlib.synthetic import TaskConfig, write_task
from recoverlib.tiny import adapter_paths, make_tiny

ROOT = Path(__file__).resolve().parent.parent
GREEDY = SamplingConfig(samples=1, temperature=0, max_new_tokens=8)


def prompts(engine, rows) -> list[str]:
    return [RecoveryTemplate().render(engine.tokenizer, r.original_text, r.rewritten_text) for r in rows]


def device_of(engine) -> str:
    return str(next(engine._model.parameters()).device)


def hf_modes(tiny: Path, work: Path, rows) -> dict:
    adapters = adapter_paths(tiny)
    sampling = SamplingConfig(samples=4, temperature=0.7, max_new_tokens=32, seed=0, ignore_eos=True)
    out = {}
    for mode in ("dynamic", "merged"):
        with make_engine("hf", tiny / "model", adapters, EngineConfig(lora_mode=mode)) as eng:
            batch = prompts(eng, rows) * 6  # 48 rows
            eng.generate(batch[:4], GREEDY, sorted(adapters))  # warm-up
            start = time.perf_counter()
            eng.generate(batch, sampling, sorted(adapters))
            tokens = len(batch) * len(adapters) * sampling.samples * sampling.max_new_tokens
            out[mode] = {"device": device_of(eng), "tok_per_s": round(tokens / (time.perf_counter() - start))}
    return out


def qlora(tiny: Path, work: Path, rows) -> dict:
    from recoverlib.training.lora import TrainConfig, train_adapter

    task = write_task(work / "task", TaskConfig(rows=48, eval_rows=16, seed=5))
    config = TrainConfig(epochs=1, lr=5e-3, batch_size=16, score_rows=0, plan="bnb-nf4", max_rows=16)
    result = train_adapter(
        tiny / "model", task / "train.csv", work / "qlora", task / "validation.csv", config
    )
    with make_engine("hf", tiny / "model", {"q": result.adapter}, EngineConfig()) as eng:
        served = eng.generate(prompts(eng, rows[:2]), GREEDY, ["q"])["q"]
    return {"files": sorted(p.name for p in Path(result.adapter).iterdir()), "served": served}


def bnb(tiny: Path, work: Path, rows) -> dict:
    from recoverlib.quant.api import quantize

    out = {}
    for plan in ("bnb-nf4", "bnb-int8"):
        shutil.rmtree(work / plan, ignore_errors=True)  # quantize refuses a non-empty output folder
        folder = quantize(tiny / "model", plan, work / plan)
        with make_engine("hf", folder, adapter_paths(tiny), EngineConfig()) as eng:
            greedy = eng.generate(prompts(eng, rows[:2]), GREEDY, [None, "tiny-a"])
            out[plan] = {"device": device_of(eng), "lora_mode": eng.lora_mode,
                         "greedy": {str(k): v for k, v in greedy.items()}}
    return out


def stream_cuda(tiny: Path, work: Path, rows) -> dict:
    """Streaming quantize with ``device="cuda"`` (sharded output), reload onto the GPU, error vs bf16
    logits."""
    from transformers import AutoModelForCausalLM

    from recoverlib.quant.api import load_quantized, quantize
    from recoverlib.quant.compare import logits_error
    from recoverlib.quant.meta import read_meta

    ref = AutoModelForCausalLM.from_pretrained(tiny / "model", dtype=torch.bfloat16).eval()
    ids = torch.randint(3, 2048, (2, 32), generator=torch.Generator().manual_seed(0))
    out = {}
    # GPTQ: GPTQModel's loop and its CUDA kernels
    for plan in ("bnb-nf4", "hqq-attn4-exp2", "gptq-attn8-exp4"):
        folder = work / f"stream-{plan}"
        shutil.rmtree(folder, ignore_errors=True)
        start = time.perf_counter()
        quantize(tiny / "model", plan, folder, device="cuda", max_shard_size="1MB", progress=False)
        seconds = time.perf_counter() - start
        model = load_quantized(folder, device_map="cuda:0")
        audit = read_meta(folder)["audit"]
        out[plan] = {
            "quantize_s": round(seconds, 1),
            "shards": len(list(folder.glob("model-*.safetensors"))),
            "device": str(next(model.parameters()).device),
            "planned_eq_audited": audit["total_bytes"] == audit["planned_bytes"],
            "rel_error": logits_error(ref, model, ids)["rel_error"],
        }
    return out


VLLM_ALONE = """
import json, os, sys
os.environ["RECOVERLIB_VLLM_PLUGIN"] = "0"
from vllm import LLM, SamplingParams
llm = LLM(sys.argv[1], max_model_len=256, gpu_memory_utilization=0.3, enforce_eager=True)
out = llm.generate([{"prompt_token_ids": [1, 50, 60, 70]}], SamplingParams(max_tokens=6, temperature=0))
print("TOKENS", json.dumps(list(out[0].outputs[0].token_ids)))
"""


def vllm_gptq(tiny: Path, work: Path, rows) -> dict:
    """``gptq-4`` from ``recoverlib quantize`` through vLLM: its own LLM(path) (plugin off), then VLLMEngine
    with two adapters mixed with base requests; greedy agreement with the HF engine on the same checkpoint."""
    import subprocess

    from recoverlib.quant.api import quantize

    folder = work / "gptq-4"
    shutil.rmtree(folder, ignore_errors=True)
    quantize(tiny / "model", "gptq-4", folder, device="cuda", progress=False)
    alone = subprocess.run([sys.executable, "-c", VLLM_ALONE, str(folder)], capture_output=True, text=True)
    out = {
        "vllm_alone": alone.stdout.split("TOKENS", 1)[-1].strip()
        if alone.returncode == 0
        else alone.stderr[-800:]
    }
    adapters, names = adapter_paths(tiny), [None, "tiny-a", "tiny-b"]
    got = {}
    for engine in ("vllm", "hf"):
        config = EngineConfig(gpu_memory_utilization=0.3) if engine == "vllm" else EngineConfig()
        with make_engine(engine, folder, adapters, config) as eng:
            got[engine] = eng.generate(prompts(eng, rows), GREEDY, names)
    out["greedy_agree"] = {
        str(a): sum(x == y for x, y in zip(got["vllm"][a], got["hf"][a], strict=True)) for a in names
    }
    out["rows"] = len(rows)
    return out


def vllm_expert_lora(tiny: Path, work: Path, rows) -> dict:
    """Adapters on the experts (and router) through vLLM as LoRA: its fused-MoE LoRA on a GPU reads Mixtral's
    published per-expert names (``experts.E.w1/w2/w3`` packed into its ``experts`` module), which recoverlib
    gives it for every layout. Greedy rows equal to vLLM on the hand-merged checkpoint (bf16: LoRA applied
    unmerged rounds differently from merged weights, so near-ties may differ), and how many rows the adapter
    changed; merged mode (a fresh engine on the merged checkpoint) and the HF engine beside it."""
    sys.path.insert(0, str(ROOT))  # the independent hand merge lives in the repository's benchmarks
    from benchmarks.adapter_formats import hand_merge
    from recoverlib.errors import RecoverlibError
    from recoverlib.tiny.peft_layouts import make_layout_adapter

    base = tiny / "model"
    adapters, out = {}, {}
    for layout in ("fused", "split", "published"):
        try:
            adapters[layout] = make_layout_adapter(base, work / "expert_lora" / layout, layout, seed=5)
        except RecoverlibError as err:  # transformers 4's environment needs the package index
            out[layout] = {"skipped": str(err)}
    vllm_cfg = {"dtype": "bfloat16", "merge_cache": str(work / "merged")}
    if torch.cuda.is_available():
        vllm_cfg["gpu_memory_utilization"] = 0.3

    def greedy(engine: str, model: Path, ads: dict, cfg: EngineConfig):
        try:
            with make_engine(engine, model, ads, cfg) as eng:
                return eng.generate(prompts(eng, rows), GREEDY, [*ads] or [None])[next(iter(ads), None)]
        except RecoverlibError as err:  # e.g. vLLM on a CPU refuses expert LoRA: said, not fatal
            return f"refused: {err}"

    base_out = greedy("vllm", base, {}, EngineConfig(**vllm_cfg))
    for layout, adapter in adapters.items():
        ref = greedy("vllm", hand_merge(base, adapter, work / "expert_lora" / f"{layout}-ref"), {},
                     EngineConfig(**vllm_cfg))
        if isinstance(ref, str) or isinstance(base_out, str):
            out[layout] = {"reference": ref if isinstance(ref, str) else base_out}
            continue
        changed = sum(a != b for a, b in zip(ref, base_out, strict=True))
        row = {"rows": len(rows), "reference_changed": changed}
        for label, engine, cfg in (
            ("vllm_dynamic", "vllm", EngineConfig(**vllm_cfg, lora_mode="dynamic")),
            ("vllm_merged", "vllm", EngineConfig(**vllm_cfg, lora_mode="merged")),
            ("hf_dynamic", "hf", EngineConfig(dtype="bfloat16", lora_mode="dynamic")),
        ):
            got = greedy(engine, base, {layout: adapter}, cfg)
            row[label] = got if isinstance(got, str) else sum(a == b for a, b in zip(got, ref, strict=True))
        out[layout] = row
    return out


def vllm_heads(tiny: Path, work: Path, rows) -> dict:
    """A verifier head (seeded random LoRA + linear head, written by PEFT) scored by the vLLM head engine
    (pooling runner, the head's LoRA per request) first, then by the HF head engine: the largest difference
    against the scores' spread (bf16 on a GPU: expect rounding, not disagreement)."""
    import numpy as np

    sys.path.insert(0, str(ROOT))  # the head maker and inputs live in the repository's benchmarks
    from benchmarks.head_engines import input_sets, random_head
    from recoverlib.heads.model import load_head

    folder = random_head(tiny / "model", work / "head", seed=0)
    pairs, cands = input_sets(1, 8, 4, seed=0)[0]
    got = {}
    for name in ("vllm", "hf"):  # vLLM first: it sizes its memory from what is free at its start
        head = load_head(folder, engine=name)
        got[name] = head.predict(pairs, cands)
        head.engine.close()
    return {"inputs": len(pairs), "max_abs_diff": float(np.abs(got["vllm"] - got["hf"]).max()),
            "spread": float(got["hf"].std())}


STEPS = {"hf_modes": hf_modes, "qlora": qlora, "bnb": bnb, "stream_cuda": stream_cuda, "vllm_gptq": vllm_gptq,
         "vllm_expert_lora": vllm_expert_lora, "vllm_heads": vllm_heads}


def main(argv: list[str]) -> int:
    out = Path(os.environ.get("OUT", ROOT / "out"))
    work = out / "gpu_check_work"
    work.mkdir(parents=True, exist_ok=True)
    tiny = make_tiny(work / "tiny", adapters=2, seed=0)
    rows = read_rows(ROOT / "examples" / "data" / "sample.csv")[:8]
    report = {"cuda": torch.cuda.is_available(), "torch": torch.__version__,
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    for name in argv or list(STEPS):
        start = time.perf_counter()
        try:
            report[name] = {"ok": True, "result": STEPS[name](tiny, work, rows)}
        except Exception as err:  # noqa: BLE001 (report every step; one failure must not hide the others)
            report[name] = {
                "ok": False,
                "error": f"{type(err).__name__}: {err}",
                "trace": traceback.format_exc()[-1500:],
            }
        report[name]["seconds"] = round(time.perf_counter() - start, 1)
        print(name, json.dumps(report[name])[:800], flush=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    return 0 if all(report[n]["ok"] for n in argv or STEPS) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
