"""Quantized checkpoints as they are published: which engine serves each format on this machine, and do the
greedy predictions it serves agree with the format's own library?

Every artifact is written from the trained tiny Mixtral (``make_trained_tiny``, 2 adapters; the base model
predicts here) by the library that writes its format (benchmarks/published_checkpoints.py): GPTQ by GPTQModel
7.6 (act-order at group 32 and per row, asymmetric, 3 and 8 bits, static groups, attention only; GPTQModel's
own expert names, and the published ones through ``recoverlib convert``), compressed-tensors W4A16 by
llm-compressor 0.14 (its own environment), bitsandbytes NF4 by transformers' ``save_pretrained``. For each
artifact and engine (``hf``: recoverlib's HF engine; ``vllm``: vLLM on this CPU) the row says served, or the
one line it was refused with (decided before any engine starts, by ``recoverlib.engines.vllm_support`` and
the HF engine's loader), and for a served one how many of the validation rows' greedy predictions equal the
reference's: the format's own library loading the checkpoint as a user would (GPTQModel's ``GPTQModel.load``,
transformers' ``from_pretrained`` for bitsandbytes), its model generating through the same prompts and
generate loop (recoverlib's HF engine holding that model). Where the format's own library cannot load the
checkpoint (GPTQModel reads only its own expert names) the reference is its load of the same tensors under
GPTQModel's names; for compressed-tensors, whose Mixtrals transformers 5.19 loads with random experts, it is
the bf16 source model (so agreement there includes the quantization error).

    python -m benchmarks.checkpoint_formats            # about 15 minutes on 2 cores, fixtures cached after
    python -m benchmarks.checkpoint_formats --rows 20 --no-ct   # quicker; skip llm-compressor's environment
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import pandas as pd

from benchmarks import published_checkpoints as writers
from benchmarks.report import machine_info, machine_line, pyplot, results_dir, write_table
from recoverlib.cache import cache_dir
from recoverlib.errors import RecoverlibError

GPTQ = {  # artifact -> GPTQModel spec (benchmarks/published_checkpoints.GPTQ_SPECS)
    name: writers.GPTQ_SPECS[name]
    for name in ("act-g32", "act-g-1", "act-asym", "act-3bit", "act-8bit", "static-g32", "attn-g32",
                 "attn-act-g32", "attn-static-g32")
}
NOT_WRITTEN = {
    "awq (AutoAWQ GEMM)": "not written here: GPTQModel 7.6 packs AWQ on CUDA only ('AWQ: CUDA is not "
                          "available'); AutoAWQ is archived and needs CUDA and transformers 4",
    "hqq (saved by transformers)": "not written here: transformers 5.19 cannot quantize with HQQ;"
                                   " recoverlib's own hqq-* checkpoints are served by --engine hf",
}


def artifacts(base: Path, work: Path, with_ct: bool) -> dict[str, tuple[Path, Path | None, str]]:
    """name -> (checkpoint, the folder its reference library loads (None: the checkpoint), writer)."""
    from recoverlib.quant.convert import publish_layout

    root = writers.gptq_set(base, GPTQ, "trained")
    out: dict[str, tuple[Path, Path | None, str]] = {}
    for name in GPTQ:
        out[f"gptq {name} (GPTQModel names)"] = (root / name, None, "GPTQModel 7.6")
    # the same tensors under Mixtral's published names (the HF engine reads both alike: tests/published)
    out["gptq act-g32 (published names)"] = (writers.published_names(root / "act-g32", work / "act-g32-pub"),
                                             root / "act-g32", "GPTQModel 7.6, renamed")
    for name in ("static-g32", "attn-g32", "attn-static-g32"):
        converted = work / f"{name}-converted"
        if not (converted / "config.json").is_file():
            publish_layout(root / name, converted)
        out[f"gptq {name} (recoverlib convert)"] = (converted, root / name,
                                                    "GPTQModel 7.6 + recoverlib convert")
    old = writers.autogptq_layout(root / "attn-g32", work / "attn-g32-autogptq")
    out["gptq attn-g32 (quantize_config.json only)"] = (old, root / "attn-g32",
                                                        "GPTQModel 7.6, AutoGPTQ's layout")
    if with_ct:  # reference: the bf16 source (transformers 5.19 loads these Mixtrals with random experts)
        for experts in (False, True):
            label = "W4A16" + ("" if experts else " attention only")
            folder = writers.compressed_tensors(base, work / f"ct-{int(experts)}", experts)
            out[f"compressed-tensors {label}"] = (folder, base, "llm-compressor 0.14")
            converted = work / f"ct-{int(experts)}-converted"
            if not (converted / "config.json").is_file():
                publish_layout(folder, converted)
            out[f"compressed-tensors {label} (recoverlib convert)"] = (converted, base,
                                                                       "llm-compressor 0.14 + convert")
    out["bitsandbytes nf4"] = (writers.bnb_checkpoint(base, work / "bnb"), None, "transformers 5.19")
    return out


def reference_model(path: Path, method: str | None):
    """The format's own library loading ``path`` as a user would."""
    import torch

    if method == "gptq" and (path / "quantize_config.json").is_file():
        from gptqmodel import BACKEND, GPTQModel

        from recoverlib.quant.backends.gptq import GptqBackend

        with GptqBackend().library():
            return GPTQModel.load(str(path), backend=BACKEND.TORCH, dtype=torch.bfloat16).model
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()


def predictions(engine, rows) -> list[str]:
    from recoverlib.engines import SamplingConfig
    from recoverlib.pipeline import PredictConfig, predict_rows

    greedy = PredictConfig(SamplingConfig(samples=1, temperature=0, max_new_tokens=12))
    return [p.samples[0].text for p in predict_rows(engine, rows, greedy)]


def reference_predictions(path: Path, ref: Path | None, rows, method: str | None) -> list[str] | str:
    """The reference's greedy predictions: recoverlib's HF engine (its tokenizer, prompts and generate loop)
    holding the model the format's own library loaded; or the one line saying why there is none."""
    from recoverlib.engines import EngineConfig
    from recoverlib.engines.hf import HFEngine

    try:
        engine = HFEngine(ref or path, config=EngineConfig(dtype="bfloat16"))
    except RecoverlibError as err:
        return f"none: {err}"
    try:
        engine._model = reference_model(ref or path, method)
        return predictions(engine, rows)
    finally:
        engine.close()
        gc.collect()


def serve(engine_name: str, path: Path, rows) -> tuple[str, list[str] | None]:
    """``("served", predictions)`` or ``("refused: <line>", None)``: the engine's own one-line refusal."""
    from recoverlib.engines import EngineConfig, make_engine
    from recoverlib.engines.vllm_support import serving_problem

    try:
        if engine_name == "vllm":
            problem = serving_problem(path)
            if problem:
                return f"refused: {problem}", None
        with make_engine(engine_name, path, None, EngineConfig(dtype="bfloat16")) as engine:
            return "served", predictions(engine, rows)
    except RecoverlibError as err:
        return f"refused: {err}", None
    finally:
        gc.collect()


def measure(args) -> tuple[pd.DataFrame, str]:
    from recoverlib.io import read_rows
    from recoverlib.quant.formats import ServedWeights
    from recoverlib.tiny import make_trained_tiny

    trained = make_trained_tiny(args.cache / "trained", adapters=2)
    rows = read_rows(trained / "task" / "validation.csv")[: args.rows]
    out, references = [], {}
    for name, (path, ref, writer) in artifacts(trained / "model", args.cache / "work", args.ct).items():
        weights = ServedWeights.from_folder(path)
        if (ref or path) not in references:  # one reference per set of tensors
            references[ref or path] = reference_predictions(path, ref, rows, weights.method)
        reference = references[ref or path]
        for engine in ("hf", "vllm"):
            start = time.perf_counter()
            result, got = serve(engine, path, rows)
            agree = "" if got is None or isinstance(reference, str) else \
                sum(a == b for a, b in zip(got, reference, strict=True))
            out.append({"artifact": name, "written by": writer, "format": weights.describe(),
                        "engine": engine,
                        "result": result.replace(str(path), "<ckpt>").replace(str(ref), "<ref>"),
                        "agree": agree, "rows": len(rows), "seconds": round(time.perf_counter() - start, 1),
                        "reference": "ok" if not isinstance(reference, str) else reference})
            print(f"{name:48s} {engine:5s} {result[:70]:70s} {agree}", flush=True)
    for name, why in NOT_WRITTEN.items():
        out.extend({"artifact": name, "written by": "-", "format": "-", "engine": engine, "result": why,
                    "agree": "", "rows": 0, "seconds": 0.0, "reference": "-"} for engine in ("hf", "vllm"))
    label = f"trained tiny Mixtral, base model, {len(rows)} validation rows, greedy, 12 tokens"
    return pd.DataFrame(out), label


def plot(frame: pd.DataFrame, path: Path) -> None:
    plt = pyplot()
    served = frame[frame["agree"] != ""].copy()
    served["share"] = served["agree"].astype(float) / served["rows"]
    labels = sorted(set(served["artifact"]), key=list(frame["artifact"]).index)
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(labels) + 1.5))
    for k, engine in enumerate(("hf", "vllm")):
        part = served[served["engine"] == engine].set_index("artifact")
        ys = [i + 0.4 * k for i in range(len(labels))]
        ax.barh(ys, [part["share"].get(a, 0.0) for a in labels], height=0.38, label=engine)
    ax.set_yticks([i + 0.2 for i in range(len(labels))], labels, fontsize=7)
    ax.axvline(0.9, color="k", lw=0.8, ls="--")
    ax.set_xlabel("greedy predictions equal to the format's own library (share of rows; absent: refused)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=60, help="validation rows predicted")
    ap.add_argument("--no-ct", dest="ct", action="store_false", help="skip llm-compressor (its own env)")
    ap.add_argument("--cache", type=Path, default=cache_dir("bench-formats"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--name", default="checkpoint_formats")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    info, load = machine_info(), os.getloadavg()
    print(machine_line(info), flush=True)
    start = time.perf_counter()
    frame, label = measure(args)
    from recoverlib.engines.vllm_support import probe_vllm_kernels

    out = results_dir(args.out, False)
    notes = [f"Command: `python -m benchmarks.checkpoint_formats {' '.join(argv or sys.argv[1:])}`",
             f"Machine: {machine_line(info)}; load average {load[0]:.1f} at start,"
             f" {os.getloadavg()[0]:.1f} at end",
             f"vLLM here: {probe_vllm_kernels().describe()}",
             f"Model: {label}; reference: the format's own library (see the docstring)",
             f"Wall time {time.perf_counter() - start:.0f} s (seconds: load + predict, shared machine)"]
    md = write_table(frame, out, args.name, "Published quantized checkpoints: served or refused, per engine",
                     notes)
    plot(frame, out / f"{args.name}.png")
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
