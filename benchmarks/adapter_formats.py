"""Adapter formats x engines: does each engine serve an adapter in each layout PEFT has written for Mixtral,
and are its predictions those of the adapter?

Question: for an adapter in each layout (attention only; transformers 4's per-expert names with the router;
transformers 5's LoRA on the fused expert parameters; per-expert ``nn.Linear`` names of a split model; DoRA, a
PEFT variant), does each route (the HF engine with PEFT's layers, ``dynamic``, or merged weights, ``merged``;
vLLM on this CPU the same two ways) serve it or refuse it (its one-line reason), and how often do its greedy
predictions equal an independent reference: the base with ``W + alpha / r * B @ A`` added by plain tensor
arithmetic, in this file (:func:`hand_merge`, not recoverlib's merge; DoRA has no such formula, its reference
is PEFT's ``merge_and_unload``), served by the same engine. The base's own predictions are the control: an
adapter that changes few of them proves nothing.

Setup: the trained tiny Mixtral (``make_trained_tiny``, cached) and the first ``--rows`` of its validation
rows, recovery prompt, greedy, 16 new tokens, float32 in both engines. Each adapter is written by the
library that writes its layout (:mod:`recoverlib.tiny.peft_layouts`; transformers 4 + PEFT in an environment
of their own), rank 8, alpha 16, every A and B drawn from N(0, sigma^2), sigma 0.07 (on the trained model it
changes most greedy predictions and keeps them fluent; 0.1 gives garbage, 0.06 changes about half).

Reproduce the committed table (about 10 minutes on 2 cores, the trained model cached):
    .venv/bin/python -m benchmarks.adapter_formats              # results/adapter_formats.{md,csv,png}
Quick check on the random tiny model (8 rows): ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import pandas as pd

from benchmarks.report import load_line, machine_info, machine_line, pyplot, results_dir, write_table
from recoverlib.cache import cache_dir
from recoverlib.engines import EngineConfig, SamplingConfig, make_engine
from recoverlib.errors import RecoverlibError
from recoverlib.io import read_rows
from recoverlib.prompt import RecoveryTemplate

FORMATS = {  # layout -> what the table calls it
    "linear": "attention only",
    "published": "transformers 4: per-expert w1/w2/w3 + router",
    "fused": "transformers 5: target_parameters (fused experts)",
    "split": "split experts: mlp.experts.E.gate_proj + router",
    "dora": "DoRA on attention",
}
ROUTES = (("hf", "dynamic"), ("hf", "merged"), ("vllm", "dynamic"), ("vllm", "merged"))
GREEDY = SamplingConfig(samples=1, temperature=0, max_new_tokens=16)
PEFT_PREFIX = "base_model.model."
# transformers 5 / split per-expert names -> Mixtral's checkpoint names, written out here on purpose
SPLIT_TO_PUBLISHED = {".mlp.experts.": ".block_sparse_moe.experts.", ".gate_proj": ".w1", ".up_proj": ".w3",
                      ".down_proj": ".w2"}


def hand_merge(base: Path, adapter: Path, out: Path) -> Path:
    """``base`` with ``adapter`` added by plain float32 tensor arithmetic on Mixtral's checkpoint names,
    written to ``out``: for every LoRA pair ``W += lora_alpha / r * B @ A``. Fused expert LoRA (PEFT's
    ``target_parameters``) is per expert ``e``: rows ``e*r:(e+1)*r`` of A and columns ``e, E+e, ...`` of B;
    gate_up_proj's B rows are gate (w1) then up (w3). Independent of recoverlib's merge on purpose."""
    from safetensors.torch import load_file, save_file

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern") or cfg.get("use_dora") or cfg.get("use_rslora"):
        raise ValueError("hand_merge does plain LoRA with one rank and alpha")
    scale = cfg["lora_alpha"] / cfg["r"]
    base_cfg = json.loads((base / "config.json").read_text())
    experts, inter = base_cfg["num_local_experts"], base_cfg["intermediate_size"]
    lora = load_file(adapter / "adapter_model.safetensors")
    weights = {k: v.float() for k, v in load_file(base / "model.safetensors").items()}
    for key in sorted(k for k in lora if k.endswith("lora_A.weight")):
        a, b = lora[key].float(), lora[key.replace("lora_A", "lora_B")].float()
        module = key.removeprefix(PEFT_PREFIX).split(".lora_A")[0].replace(".base_layer", "")
        if module.endswith(".mlp.experts"):  # a fused stack: which parameter, told by B's rows
            layer = module.removesuffix(".mlp.experts") + ".block_sparse_moe.experts"
            rank = a.shape[0] // experts
            for e in range(experts):
                b_e = b.reshape(b.shape[0], rank, experts)[:, :, e]
                delta = scale * (b_e @ a.reshape(experts, rank, -1)[e])
                if b.shape[0] == 2 * inter:
                    weights[f"{layer}.{e}.w1.weight"] += delta[:inter]
                    weights[f"{layer}.{e}.w3.weight"] += delta[inter:]
                else:
                    weights[f"{layer}.{e}.w2.weight"] += delta
            continue
        for old, new in SPLIT_TO_PUBLISHED.items():
            module = module.replace(old, new)
        module = module.replace(".mlp.gate", ".block_sparse_moe.gate")
        weights[f"{module}.weight"] += scale * (b @ a)
    out.mkdir(parents=True, exist_ok=True)
    for f in base.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy2(f, out / f.name)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    return out


def peft_merge(base: Path, adapter: Path, out: Path) -> Path:
    """The reference for a variant without a plain formula (DoRA): PEFT's own ``merge_and_unload``,
    float32."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def reference(base: Path, layout: str, adapter: Path, out: Path) -> Path:
    return peft_merge(base, adapter, out) if layout == "dora" else hand_merge(base, adapter, out)


def greedy(engine: str, model: Path, adapters: dict, mode: str, rows, work: Path) -> dict:
    """Greedy completions per adapter (None: the base) from one engine."""
    cfg = EngineConfig(dtype="float32", lora_mode=mode, merge_cache=str(work / "merged"), batch_size=16)
    with make_engine(engine, model, adapters, cfg) as eng:
        prompts = [RecoveryTemplate().render(eng.tokenizer, r.original_text, r.rewritten_text) for r in rows]
        out = eng.generate(prompts, GREEDY, [None, *sorted(adapters)])
    return {k: [t[0] for t in v] for k, v in out.items()}


def measure(base: Path, rows, work: Path, sigma: float, layouts) -> pd.DataFrame:
    """Every (format, route) cell: served or refused, agreement with the reference, change from the base."""
    from recoverlib.tiny.peft_layouts import make_layout_adapter

    adapters, refs = {}, {}
    for i, layout in enumerate(layouts):
        adapters[layout] = make_layout_adapter(base, work / "adapters" / layout, layout, sigma=sigma,
                                               seed=11 + i)
        refs[layout] = reference(base, layout, adapters[layout], work / "reference" / layout)
    records = []
    for engine in ("hf", "vllm"):
        base_out = greedy(engine, base, {}, "dynamic", rows, work)[None]
        ref_out = {lay: greedy(engine, refs[lay], {}, "dynamic", rows, work)[None] for lay in layouts}
        for (route_engine, mode) in ROUTES:
            if route_engine != engine:
                continue
            for layout in layouts:
                record = {"format": FORMATS[layout], "layout": layout, "engine": engine, "mode": mode,
                          "rows": len(rows),
                          "reference changed": sum(r != b for r, b in zip(ref_out[layout], base_out,
                                                                          strict=True))}
                try:
                    got = greedy(engine, base, {layout: adapters[layout]}, mode, rows, work)[layout]
                except RecoverlibError as err:
                    records.append({**record, "status": f"refused: {err}"})
                    continue
                triples = list(zip(got, ref_out[layout], base_out, strict=True))
                records.append({**record, "status": "served",
                                "= reference": sum(g == r for g, r, _ in triples),
                                # the rows that prove something: where the adapter moved the reference
                                "= reference where it changed": sum(g == r != b for g, r, b in triples),
                                "changed": sum(g != b for g, _, b in triples)})
                print(json.dumps(records[-1]), flush=True)
    return pd.DataFrame(records)


def plot(frame: pd.DataFrame, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    routes = [f"{e} {m}" for e, m in ROUTES]
    formats = list(dict.fromkeys(frame["format"]))
    width = 0.8 / len(routes)
    for j, route in enumerate(routes):
        engine, mode = route.split()
        part = frame[(frame.engine == engine) & (frame["mode"] == mode)].set_index("format")
        for i, fmt in enumerate(formats):
            x = i + (j - (len(routes) - 1) / 2) * width
            row = part.loc[fmt]
            if row["status"] != "served":
                ax.text(x, 0.02, "refused", rotation=90, ha="center", va="bottom", fontsize=7)
                continue
            ax.bar(x, row["= reference"] / row["rows"], width, color=f"C{j}", label=route if i == 0 else None)
    ax.set_xticks(range(len(formats)), [f.split(":")[0] for f in formats], fontsize=8)
    ax.tick_params(axis="x", length=0)
    ax.set_ylabel("greedy rows equal to the reference")
    ax.set_ylim(0, 1.05)
    ax.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(routes))
    ax.set_title("Adapter formats x engines (refused: the engine says why, one line)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--sigma", type=float, default=0.07,
                        help="std of every LoRA A and B (0.07 at rank 8, alpha 16: the trained model changes"
                        " most greedy predictions and stays fluent; 0.1 makes them garbage)")
    parser.add_argument("--quick", action="store_true", help="random tiny model, 8 rows")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    work = cache_dir("bench-adapter-formats")
    shutil.rmtree(work, ignore_errors=True)
    before = os.getloadavg()
    if args.quick:
        from recoverlib.tiny import make_tiny

        base = make_tiny(work / "tiny", adapters=0) / "model"
        rows = read_rows(Path(__file__).resolve().parent.parent / "examples" / "data" / "sample.csv")[:8]
    else:
        from recoverlib.tiny.trained import make_trained_tiny

        trained = make_trained_tiny(work / "trained", adapters=2)
        base, rows = trained / "model", read_rows(trained / "task" / "validation.csv")[: args.rows]
    frame = measure(base, rows, work, args.sigma, list(FORMATS))
    out = results_dir(args.out, args.quick)
    notes = [
        "Question: does each engine route serve an adapter in each PEFT layout, and are its greedy"
        " predictions the adapter's? Reference: the base plus W + alpha/r * B @ A by plain tensor arithmetic"
        " (benchmarks/adapter_formats.py, hand_merge; DoRA: PEFT's merge_and_unload), served by the same"
        " engine. `reference changed`: rows where the reference differs from the base (the control: agreement"
        " on the others proves nothing); `= reference where it changed`: of those, rows the route got right;"
        " `changed`: rows where the route's prediction differs from the base's.",
        f"Model: {'random tiny Mixtral' if args.quick else 'trained tiny Mixtral'}, {len(rows)} validation"
        f" rows, greedy, 16 new tokens, float32; adapters rank 8, alpha 16, A and B ~ N(0, {args.sigma}^2),"
        " each written by the library that writes its layout (transformers 4 + PEFT 0.17 for the per-expert"
        " names, transformers 5 + PEFT for the others).",
        "vLLM here is the CPU build: its LoRA layers cannot touch experts, so expert adapters are refused as"
        " LoRA and served merged by a fresh engine.",
        f"Machine: {machine_line(machine_info())}. {load_line(before, os.getloadavg())}.",
        "Reproduce: .venv/bin/python -m benchmarks.adapter_formats",
    ]
    counts = ["reference changed", "= reference", "= reference where it changed", "changed"]
    frame[counts] = frame[counts].astype("Int64")
    table = frame.drop(columns=["layout"]).astype(object).where(frame.drop(columns=["layout"]).notna(), "")
    print(write_table(table, out, "adapter_formats", "Adapter formats x engines", notes).read_text())
    plot(frame, out / "adapter_formats.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
