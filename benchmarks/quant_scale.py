"""Quantizing Mixtral-8x7B for real: does ``recoverlib quantize`` stream, i.e. is its peak host memory about
one decoder layer whatever the number of layers, how long does a full-width layer take on this CPU, and what
does that extrapolate to for the published 32-layer model?

Random bf16 checkpoints with Mixtral-8x7B's shapes (hidden 4096, intermediate 14336, 8 experts, vocab 32000,
32 heads, 8 KV heads) and 1, 2, 4 decoder layers are written in the published layout (sharded safetensors,
``block_sparse_moe.experts.E.w1/w2/w3``) by a writer that holds one shard at a time. Each is quantized by
``recoverlib quantize`` in a fresh subprocess; measured: wall time, peak RSS (``os.wait4``'s ``ru_maxrss`` of
that process), output bytes and bits/param (from the written checkpoint's audit); the planner's peak estimate
beside the measurement (rows of the whole-model path the library had before every backend streamed are plotted
when a CSV holds them: quant_scale.csv did until its quiet-machine rerun, see its history). Time per layer is
the least-squares slope of wall time over layers (the intercept is the fixed start cost: imports and packing).

Full run (6 minutes on 2 quiet cores, 25 on shared ones; writes ~22 GB under --scratch, deleted after):
    nice python -m benchmarks.quant_scale
Quick check (reduced width, under 2 minutes; results in the scratch folder, not benchmarks/results):
    python -m benchmarks.quant_scale --quick
GPTQ at full width (GPTQModel's layer loop; about 15 minutes and 14.4 GB RSS per layer on 2 cores), the
committed quant_scale_gptq table (1 and 2 layers, run one at a time, rows merged, report rebuilt with
--from-csv):
    nice python -m benchmarks.quant_scale --presets gptq-4 --layers 1 2 --name quant_scale_gptq
A dense base at its full width (``--model``: one of recoverlib's named public configs; the checkpoint in its
family's own names, Mistral-7B: hidden 4096, intermediate 14336, 32 heads, 8 KV heads, vocab 32000), peak RSS
and bytes only (``--memory-only``: no timings, ``uptime`` before and after in the report; on a shared machine
timings are not comparable), the committed quant_scale_dense table:
    python -m benchmarks.quant_scale --model mistral-7b --memory-only --name quant_scale_dense
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from benchmarks.report import machine_info, machine_line, pyplot, run_measured, write_table
from benchmarks.synthetic_checkpoint import write_checkpoint

ROOT = Path(__file__).resolve().parent.parent

FULL = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 128, "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 32000}
QUICK = {
    **FULL,
    "hidden_size": 512,
    "intermediate_size": 1792,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": 8000,
}


def stream_phase(out: Path):
    """The streaming quantizer's phase, read from what it has written: pieces, packing shards, audit."""
    partial = out.parent / f"{out.name}.partial"

    def phase() -> str:
        final, gptq = partial / "final", partial / "quantized"  # recoverlib's piece loop; GPTQModel's loop
        if gptq.exists():
            return "audit" if _gptq_done(partial) else "pack"  # GPTQModel saving, then the audit
        if not final.exists():
            return "pieces"
        return "audit" if (final / "config.json").exists() else "pack"

    return phase


def _gptq_done(partial: Path) -> bool:
    try:
        return "gptq" in json.loads((partial / "progress.json").read_text())["done"]
    except (OSError, ValueError, KeyError):
        return False


def uptime() -> str:
    """``uptime``'s line (load averages of the shared machine), for the report."""
    import subprocess

    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def measure(src: Path, out: Path, preset: str, layers: int, path: str, args) -> dict:
    from recoverlib.model_folder import read_config
    from recoverlib.quant.meta import read_meta
    from recoverlib.quant.plan import PRESETS
    from recoverlib.quant.planner import quantize_peak

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "recoverlib.cli", "quantize", "--model", str(src), "--plan", preset,
           "--out", str(out), "--quiet", "--max-shard-size", args.max_shard_size]
    load_before = os.getloadavg()[0]
    wall, rss, phases = run_measured(cmd, env, stream_phase(out))
    load_after = os.getloadavg()[0]
    audit = read_meta(out)["audit"]
    size16 = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    cfg = read_config(src)
    est = quantize_peak(cfg, PRESETS[preset], "cpu", _size(args.max_shard_size))
    row = {"path": path, "preset": preset, "layers": layers, "params_B": audit["total_params"] / 1e9,
           "bf16_GB": size16 / 1e9, "wall_s": wall, "peak_rss_GB": rss / 1e9, "rss_over_bf16": rss / size16,
           "planner_peak_GB": est.host_bytes / 1e9 if path == "streaming" else float("nan"),
           "out_GB": sum(f.stat().st_size for f in out.glob("*.safetensors")) / 1e9,
           "audited_GB": audit["total_bytes"] / 1e9, "bits_per_param": audit["effective_bits"],
           "planned_eq_audited": audit["total_bytes"] == audit["planned_bytes"],
           **{f"rss_{k}_GB": phases.get(k, float("nan")) / 1e9 for k in ("pieces", "pack", "audit")},
           "load_before": load_before, "load_after": load_after}  # 1-minute load average around the run
    if args.memory_only:
        del row["wall_s"]
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def _size(text: str) -> int:
    from recoverlib.quant.checkpoint import parse_size

    return parse_size(text)


def rows_from_csv(csv: Path, shapes: dict, args) -> list[dict]:
    """Measured rows of an earlier run, with the planner's estimate recomputed from each row's config."""
    import pandas as pd

    from recoverlib.quant.plan import PRESETS
    from recoverlib.quant.planner import quantize_peak

    rows = pd.read_csv(csv).to_dict("records")
    for r in rows:
        if r["path"] == "streaming":
            cfg = {"model_type": "mixtral", **shapes, "num_hidden_layers": int(r["layers"])}
            r["planner_peak_GB"] = (
                quantize_peak(cfg, PRESETS[r["preset"]], "cpu", _size(args.max_shard_size)).host_bytes / 1e9
            )
    args.layers = sorted({int(r["layers"]) for r in rows})
    return rows


def per_layer_fit(rows: list[dict]) -> tuple[float, float]:
    """Least-squares (seconds per layer, fixed seconds) of wall time over layers."""
    xs, ys = [r["layers"] for r in rows], [r["wall_s"] for r in rows]
    if len(set(xs)) < 2:
        return float("nan"), float("nan")
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return slope, my - slope * mx


def plot(
    rows: list[dict],
    extrapolated: list[tuple[int, float]],
    out: Path,
    title: str,
    full32: float | None = None,
) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    stream = [r for r in rows if r["path"] == "streaming"]
    ax.plot(
        [r["layers"] for r in stream],
        [r["peak_rss_GB"] for r in stream],
        "o-",
        label="streaming: measured peak RSS",
    )
    ax.plot(
        [x for x, _ in extrapolated], [y for _, y in extrapolated], "s--", label="streaming: planner estimate"
    )
    if full32 is not None:
        ax.axhline(full32, color="purple", lw=0.8, label=f"planner, the whole model: {full32:.1f} GB")
    ax.plot(
        [r["layers"] for r in stream],
        [r["bf16_GB"] for r in stream],
        ":",
        color="grey",
        label="bf16 checkpoint size",
    )
    ax.plot(
        [r["layers"] for r in stream],
        [0.5 * r["bf16_GB"] for r in stream],
        ":",
        color="green",
        label="target 0.5x bf16",
    )
    whole = [r for r in rows if r["path"] == "whole-model"]
    if whole:
        ax.plot([r["layers"] for r in whole], [r["peak_rss_GB"] for r in whole], "x", ms=10, color="red",
                label="whole-model path: measured")
    ax.set_xlabel("decoder layers")
    ax.set_ylabel("GB")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="reduced width (hidden 512), results in --scratch")
    p.add_argument("--model", default="mixtral-8x7b", help="the named public config whose width to use")
    p.add_argument("--memory-only", action="store_true",
                   help="peak RSS and bytes only: no timings; uptime before and after in the report")
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--presets", nargs="+", default=["bnb-nf4"])
    p.add_argument("--max-shard-size", default="5GB")
    p.add_argument("--scratch", type=Path, default=Path("/work/scratch/quant_scale"))
    p.add_argument(
        "--out-dir", type=Path, default=None, help="default: benchmarks/results (--quick: --scratch)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="quant_scale", help="results file stem")
    p.add_argument(
        "--note", action="append", default=[], help="a line added to the report (how a run was made)"
    )
    p.add_argument(
        "--from-csv",
        type=Path,
        default=None,
        help="rebuild the report from a results CSV (measured columns kept, planner column recomputed)",
    )
    args = p.parse_args(argv)
    from recoverlib.architectures import public_config
    from recoverlib.quant.plan import PRESETS
    from recoverlib.quant.planner import quantize_peak

    model = public_config(args.model)
    if model is None:
        p.error(f"--model {args.model}: not a named public config")
    if args.model == "mixtral-8x7b":
        shapes = QUICK if args.quick else FULL
    else:
        full = {k: v for k, v in model.items() if k != "num_hidden_layers"}
        shapes = {**full, **{k: QUICK[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                   "num_key_value_heads", "head_dim", "vocab_size")}} \
            if args.quick else full
    args.uptime = [uptime()] if args.from_csv is None else []  # a rebuilt report keeps no stale load
    out_dir = args.out_dir or (args.scratch if args.quick else ROOT / "benchmarks" / "results")
    rows = [] if args.from_csv is None else rows_from_csv(args.from_csv, shapes, args)
    for layers in args.layers if args.from_csv is None else []:
        cfg = {**shapes, "num_hidden_layers": layers}
        src = args.scratch / f"src-L{layers}"
        shutil.rmtree(src, ignore_errors=True)
        t0 = time.perf_counter()
        write_checkpoint(src, cfg, args.seed)
        print(f"wrote {src} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        for preset in args.presets:
            out = args.scratch / f"q-{preset}-L{layers}"
            shutil.rmtree(out, ignore_errors=True)
            rows.append(measure(src, out, preset, layers, "streaming", args))
            shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(src)
    if args.from_csv is None:
        args.uptime.append(uptime())
    report(rows, args, shapes, out_dir, model, PRESETS, quantize_peak)


def report(rows, args, shapes, out_dir: Path, model: dict, presets, quantize_peak) -> None:
    import pandas as pd

    notes, extrapolated = [], []
    layers = model["num_hidden_layers"]
    for preset in args.presets:
        stream = [r for r in rows if r["path"] == "streaming" and r["preset"] == preset]
        full = {**model, **shapes, "num_hidden_layers": layers}
        est = quantize_peak(full, presets[preset], "cpu", _size(args.max_shard_size))
        extrapolated = [(r["layers"], r["planner_peak_GB"]) for r in stream]
        err = [(r["planner_peak_GB"] - r["peak_rss_GB"]) / r["peak_rss_GB"] for r in stream]
        whole = (f"{layers} layers ({args.model}): a planner peak of {est.host_bytes / 1e9:.2f} GB RSS "
                 f"({est.weights_bytes / 1e9:.2f} GB written)")
        if args.memory_only:
            notes.append(f"{preset}: {whole}")
        else:
            slope, fixed = per_layer_fit(stream)
            notes.append(f"{preset}: {slope:.1f} s per layer + {fixed:.1f} s fixed (least squares over "
                         f"{len(stream)} runs); {whole}, about {(layers * slope + fixed) / 3600:.2f} h")
        notes += [
            f"{preset}: planner peak vs measured: within "
            f"{100 * max(map(abs, err), default=float('nan')):.0f}% "
            f"(per run, planner minus measured: {', '.join(f'{100 * e:+.0f}%' for e in err)})",
            *[
                f"{preset}, {r['layers']} layer(s): peak RSS {r['peak_rss_GB']:.2f} GB = "
                f"{r['rss_over_bf16']:.2f}x "
                f"the bf16 checkpoint ({r['path']})"
                for r in rows
                if r["preset"] == preset
            ],
        ]
    frame = pd.DataFrame(rows)
    width = f"{args.model} full width" if not args.quick else "reduced width (hidden 512, quick)"
    cmd = "python -m benchmarks.quant_scale" + (" --quick" if args.quick else "")
    if args.model != "mixtral-8x7b":
        cmd += f" --model {args.model}"
    if args.memory_only:
        cmd += " --memory-only"
    if args.presets != ["bnb-nf4"]:
        cmd += " --presets " + " ".join(args.presets)
    if args.name != "quant_scale":
        cmd += f" --name {args.name}"
    if args.layers != [1, 2, 4]:
        cmd += " --layers " + " ".join(map(str, args.layers))
    notes = [
        f"Command: `{cmd}` (layers {args.layers}, presets {args.presets}, --max-shard-size "
        f"{args.max_shard_size})" + ("; report rebuilt from its CSV (--from-csv)" if args.from_csv else ""),
        f"Shapes: {width}; {json.dumps(shapes)}",
        f"Machine: {machine_line(machine_info())}",
        *(f"uptime {when}: {line}" for when, line in zip(("before", "after"), args.uptime, strict=False)),
        *args.note,
        *notes,
    ]
    what = "peak RSS and bytes" if args.memory_only else "peak RSS and time per layer"
    write_table(frame, out_dir, args.name, f"recoverlib quantize at {args.model} scale: {what}", notes)
    plot(
        rows,
        extrapolated,
        out_dir / f"{args.name}.png",
        f"peak RSS of recoverlib quantize ({', '.join(args.presets)}), {width}",
        est.host_bytes / 1e9,
    )
    print((out_dir / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
