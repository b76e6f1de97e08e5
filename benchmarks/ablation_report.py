"""The quantization ablation's outputs: the answer to "should the router stay in full precision?" with its
figures, the md (machine, model, command, answer, tables), the csv, and the png (bits vs KL, bits vs
decode)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmarks.report import machine_line, markdown_table, pyplot, write_table

ROUTER = "+router"


def _span(frame: pd.DataFrame, col: str, digits: int = 2) -> list[str]:
    """``median (min-max)`` cells; empty where not measured (the bf16 row has no quantize time)."""
    out = []
    for med, lo, hi in zip(frame[col], frame[f"{col}_min"], frame[f"{col}_max"], strict=True):
        out.append("" if pd.isna(med) else f"{med:,.{digits}f} ({lo:,.{digits}f}-{hi:,.{digits}f})")
    return out


def display(frame: pd.DataFrame) -> pd.DataFrame:
    """The md table: one row per preset, timings as median (min-max)."""
    shown = pd.DataFrame(
        {
            "preset": frame["preset"],
            "router": frame["router"],
            "bits/param": frame["bits"].map("{:.3f}".format),
            "weight bytes": frame["bytes"].map("{:,}".format),
            "quantize s": _span(frame, "quantize_s"),
            "load s": _span(frame, "load_s"),
            "prefill tok/s": _span(frame, "prefill_tok_s", 0),
            "decode tok/s": _span(frame, "decode_tok_s", 0),
            "KL (nats/token)": frame["kl"].map("{:.5f}".format),
            "top-1": frame["top1"].map("{:.3f}".format),
            "router top-2": frame["router_top2"].map("{:.3f}".format),
            "PPL": frame["ppl"].map("{:,.1f}".format),
        }
    )
    if "metric" in frame:
        shown["metric"] = frame["metric"].map("{:.4f}".format)
    if "metric_vllm" in frame:  # the same predictions served through vLLM on this machine, where it can
        shown["metric (vLLM)"] = frame["metric_vllm"].map(lambda v: "-" if pd.isna(v) else f"{v:.4f}")
        shown["vLLM here"] = frame["vllm"]
    return shown


def router_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """Each preset beside its +router twin: bytes saved (here and, by the planner, on Mixtral-8x7B) and what
    quantizing the router did to KL, top-1, router agreement, perplexity and the metric."""
    from recoverlib.quant.plan import PRESETS
    from recoverlib.quant.planner import MIXTRAL_8X7B, plan_bytes

    by_name = frame.set_index("preset")
    rows = []
    for name in by_name.index:
        if name + ROUTER not in by_name.index:
            continue
        kept, quant = by_name.loc[name], by_name.loc[name + ROUTER]
        big = (
            plan_bytes(MIXTRAL_8X7B, PRESETS[name]).total_bytes
            - plan_bytes(MIXTRAL_8X7B, PRESETS[name + ROUTER]).total_bytes
        )
        row = {
            "preset": name,
            "router bits": PRESETS[name + ROUTER].router.bits,
            "bytes saved": int(kept["bytes"] - quant["bytes"]),
            "saved %": 100 * (kept["bytes"] - quant["bytes"]) / kept["bytes"],
            "8x7B MB saved": big / 1e6,
            "KL kept": kept["kl"],
            "KL router quantized": quant["kl"],
            "KL change %": 100 * (quant["kl"] / kept["kl"] - 1),
            "top-1 change": quant["top1"] - kept["top1"],
            "router top-2 change": quant["router_top2"] - kept["router_top2"],
            "PPL change %": 100 * (quant["ppl"] / kept["ppl"] - 1),
        }
        if "metric" in by_name:
            row["metric change"] = quant["metric"] - kept["metric"]
        rows.append(row)
    return pd.DataFrame(rows)


def answer(pairs: pd.DataFrame, floor: dict) -> str:
    """A short paragraph with the figures: does quantizing the router pay?"""
    if pairs.empty:
        return "No preset ran beside its +router twin, so the router question is not answered by this run."
    n = len(pairs)
    worse_kl, worse_route = (
        int((pairs["KL change %"] > 0).sum()),
        int((pairs["router top-2 change"] < 0).sum()),
    )
    worse_ppl = int((pairs["PPL change %"] > 0).sum())
    text = (
        f"Quantizing the router (like attention) saves {pairs['bytes saved'].median():,.0f} bytes here "
        "(median, "
        f"{pairs['saved %'].median():.3f}% of the weights) and, by the planner, "
        f"{pairs['8x7B MB saved'].median():.1f} MB on Mixtral-8x7B (of tens of GB). In return KL against "
        "bf16 "
        f"rises in {worse_kl} of {n} presets (median {pairs['KL change %'].median():+.1f}%, range "
        f"{pairs['KL change %'].min():+.1f}% to {pairs['KL change %'].max():+.1f}%), router top-2 agreement "
        "falls "
        f"in {worse_route} of {n} (median {pairs['router top-2 change'].median():+.4f}), perplexity rises in "
        f"{worse_ppl} of {n} (median {pairs['PPL change %'].median():+.2f}%), top-1 agreement moves by a "
        "median "
        f"{pairs['top-1 change'].median():+.4f}. The bf16-vs-fp32 noise floor is KL {floor['kl']:.5f}, top-1 "
        f"{floor['top1']:.3f}."
    )
    by_bits = pairs.groupby("router bits")["KL change %"]
    if by_bits.ngroups > 1:
        text += (
            " By the router's bits: "
            + "; ".join(
                f"{bits}-bit router, KL median {kl.median():+.1f}% ({len(kl)} presets)"
                for bits, kl in by_bits
            )
            + "."
        )
    if "metric change" in pairs:
        text += (f" The metric moves by a median {pairs['metric change'].median():+.4f} (range "
                 f"{pairs['metric change'].min():+.4f} to {pairs['metric change'].max():+.4f}) on few rows.")
    if worse_kl > n / 2:
        return text + (" So: keep the router in full precision. It is a negligible share of the bytes, and "
                       "quantizing it adds error in most presets.")
    return (
        text
        + " So: on this model quantizing the router shows no consistent cost; the bytes it saves are "
          "negligible."
    )


def plot(frame: pd.DataFrame, floor: dict, path: Path, title: str) -> None:
    plt = pyplot()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    quant = frame[frame["preset"] != "bf16"]
    for router, marker, colour in (("kept", "o", "C0"), ("quantized", "^", "C3")):
        part = quant[quant["router"] == router]
        ax1.scatter(part["bits"], part["kl"], marker=marker, color=colour, label=f"router {router}", zorder=3)
        err = [
            part["decode_tok_s"] - part["decode_tok_s_min"],
            part["decode_tok_s_max"] - part["decode_tok_s"],
        ]
        ax2.errorbar(part["bits"], part["decode_tok_s"], yerr=err, fmt=marker, color=colour, capsize=3,
                     label=f"router {router}")
    offsets = ((5, 5), (5, -11), (-5, 12))  # staggered so neighbouring labels do not sit on each other
    for i, row in enumerate(quant[quant["router"] == "kept"].sort_values("bits").itertuples()):
        twin = quant[quant["preset"] == row.preset + ROUTER]
        for ax, col in ((ax1, "kl"), (ax2, "decode_tok_s")):
            if not twin.empty:
                ax.plot(
                    [row.bits, twin["bits"].iloc[0]],
                    [getattr(row, col), twin[col].iloc[0]],
                    color="0.7",
                    lw=0.8,
                )
            ax.annotate(row.preset, (row.bits, getattr(row, col)), fontsize=7, xytext=offsets[i % 3],
                        textcoords="offset points", ha="right" if offsets[i % 3][0] < 0 else "left")
    ax1.axhline(floor["kl"], color="0.5", ls="--", lw=0.8, label="bf16 vs fp32 (floor)")
    ax1.set_yscale("log")
    ax1.set_xlabel("effective bits / parameter (audited)")
    ax1.set_ylabel("mean KL(bf16 || quantized), nats/token")
    ref = frame[frame["preset"] == "bf16"]
    ax2.scatter(ref["bits"], ref["decode_tok_s"], marker="*", s=120, color="k", label="bf16")
    ax2.set_xlabel("effective bits / parameter (audited)")
    ax2.set_ylabel("decode tokens / s (HFEngine, median; min-max bars)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _checks(frame: pd.DataFrame) -> str:
    """Audited bytes vs the planner's, and reload exactness (the csv has both, and the relative logits
    error)."""
    quant = frame[frame["preset"] != "bf16"]
    planned = int((quant["bytes"] == quant["planned_bytes"]).sum())
    head = f"Checks: audited bytes equal the planner's in {planned} of {len(quant)} presets; "
    if "reload_exact" not in quant:
        return (
            head
            + "quantized by the streaming `recoverlib quantize` (no in-memory model to compare the reload "
              "with)."
        )
    exact = int(quant["reload_exact"].astype(bool).sum())
    return (
        head
        + f"the checkpoint loaded back reproduces the in-memory quantized model's logits exactly in {exact} "
          f"of {len(quant)}."
    )


def write_results(
    frame: pd.DataFrame,
    extra: dict,
    out: Path,
    name: str,
    info: dict,
    label: str,
    command: str,
    seconds: float,
) -> Path:
    """``out/name.{csv,md,png}``; the md holds the machine, model, command, answer and both tables."""
    w, pairs = extra["workload"], router_pairs(frame)
    notes = [
        f"Machine: {machine_line(info)}",
        f"Model: {label}",
        f"Command: {command}",
        *([f"Peak RSS of the whole run: {extra['peak_rss'] / 1e9:.2f} GB"] if "peak_rss" in extra else []),
        f"Quality: {extra['tokens']} tokens of recoverlib's example texts in windows of {w.seq_len}; KL and "
        "top-1 of next-token distributions and router top-2 agreement are against the bf16 model; PPL is "
        "each "
        f"model's own (random weights: high, compare across rows only).",
        f"Speed: HFEngine, {w.prompts} prompts per call; prefill = prompts of about {w.prefill_tokens} "
        "tokens, 1 "
        f"new token (prompt tok/s); decode = prompts of about {w.short_tokens} tokens, {w.decode_tokens} new "
        f"tokens, eos ignored (new tok/s, short prefill included). Median of {w.repeats} (min-max); one "
        "warm-up "
        f"call first. 2 shared cores: timings are noisy.",
        f"Metric: {extra['rows']} validation rows, adapters {', '.join(extra['adapters']) or 'none (base)'}, "
        f"{w.samples} samples each (temperature 0.7, up to {w.metric_tokens} tokens, concatenated)."
        if extra["rows"]
        else "Metric: not run.",
        _checks(frame),
        f"Run time: {seconds / 60:.1f} min.",
    ]
    md = write_table(
        display(frame), out, name, "Quantization ablation: presets, router kept vs quantized", notes
    )
    frame.to_csv(out / f"{name}.csv", index=False)  # numbers, not the display strings
    body = md.read_text().replace(
        "\n\n| preset",
        f"\n\n## What it answers\n\n{answer(pairs, extra)}\n\n## Presets\n\n"
        f"![bits vs KL and decode speed]({name}.png)\n\n| preset",
        1,
    )
    if len(pairs):  # only presets run beside their +router twin have a pair
        body += "\n## Router kept vs quantized\n\n" + markdown_table(pairs.round(5)) + "\n"
    md.write_text(body)
    plot(frame, extra, out / f"{name}.png", f"{label}; {info['cpu']}")
    return md
