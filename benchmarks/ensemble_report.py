"""The ensemble-quality benchmark's report: the issues' checks on a level's combination rows, its notes, the
markdown and CSV of the whole run, and the plot (``benchmarks/ensemble_quality.py`` computes the rows)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.report import load_line, machine_info, machine_line, pyplot


def tag(args) -> str:
    """``_TAG`` for ``--tag TAG`` (results of another setup beside the default ones), else ""."""
    return f"_{args.tag}" if args.tag else ""


def criterion(frame: pd.DataFrame) -> dict:
    """The issues' checks on test: tuned within the best's interval; above concat wherever concat is not the
    best; never below max(first prediction, concat) - 0.01 (it picks the better side of hedging in either
    geometry)."""
    best = frame.loc[frame.test_score.idxmax()]
    tuned = frame.loc[frame.tuned].iloc[0]
    concat = frame.loc[frame.strategy == "concat"].iloc[0]
    first = frame.loc[frame.strategy == "first"].iloc[0]
    within = bool(tuned.test_score >= best.test_low)
    above = bool(concat.strategy == best.strategy or tuned.test_score > concat.test_score)
    side = bool(tuned.test_score >= max(first.test_score, concat.test_score) - 0.01)
    return {"tuned": tuned.strategy, "tuned_score": tuned.test_score, "best": best.strategy,
            "best_score": best.test_score, "best_low": best.test_low, "concat_score": concat.test_score,
            "first_score": first.test_score, "within_best_interval": within, "above_concat": above,
            "better_side": side}


def md_table(frame: pd.DataFrame) -> str:
    """One level's rows for the markdown: intervals inline."""
    from benchmarks.report import markdown_table

    view = pd.DataFrame({
        "strategy": frame.strategy, "split": frame.split, "score": frame.score.map("{:.4f}".format),
        "95% CI": [f"[{a:.4f}, {b:.4f}]" for a, b in zip(frame.low, frame.high, strict=True)],
        "vs greedy": [f"{d:+.4f} [{a:+.4f}, {b:+.4f}]" for d, a, b in
                      zip(frame.vs_greedy, frame.vs_low, frame.vs_high, strict=True)],
        "tokens/row": frame.tokens_per_row.map("{:.1f}".format), "s": frame.seconds.map("{:.1f}".format)})
    return markdown_table(view)


def level_notes(info: dict, setup) -> list[str]:
    c = info["criterion"]
    return [
        f"Model: {info['model']}; adapters {', '.join(info['adapters'])}; baseline (*vs greedy*): "
        f"`{info['adapters'][0]} greedy`.",
        f"Best constant prompt (train split, score there {info['constant_train']:.4f}): "
        f'"{info["constant"]}".',
        f"Generation (greedy base + adapters, then {setup.samples} samples per adapter, T="
        f"{setup.temperature}): "
        + ", ".join(f"{s} {v:.0f} s" for s, v in info["generation_s"].items())
        + f"; combination tuning + test scoring {info['combination_s']:.0f} s.",
        f"Combination criterion: tuned **{c['tuned']}** {c['tuned_score']:.4f} vs best **{c['best']}** "
        f"{c['best_score']:.4f} (interval low {c['best_low']:.4f}): within the best's interval: "
        f"**{c['within_best_interval']}**; concat {c['concat_score']:.4f}, tuned above concat wherever "
        "concat "
        f"is not the best: **{c['above_concat']}**; first {c['first_score']:.4f}, tuned >= max(first, "
        "concat) "
        f"- 0.01: **{c['better_side']}**.",
        *(info["heads"] or []),
    ]


def write_outputs(
    frame: pd.DataFrame, infos: list[dict], setup, args, seconds: float, doc: str
) -> list[Path]:
    """The whole run's table (markdown with every level's notes, CSV) and plot; ``doc``: the benchmark's
    docstring (its first paragraph heads the markdown)."""
    name = f"ensemble_quality{tag(args)}" + ("_quick" if args.quick else "")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cols = [
        "embedder",
        "level",
        "split",
        "strategy",
        "group",
        "score",
        "low",
        "high",
        "vs_greedy",
        "vs_low",
        "vs_high",
        "tokens_per_row",
        "seconds",
    ]
    frame[cols].to_csv(out / f"{name}.csv", index=False, float_format="%.5f")
    cmd = "PYTHONPATH=. .venv/bin/python -m benchmarks.ensemble_quality" + (" --quick" if args.quick else "")
    cmd += "".join(f" {a}" for a in args.argv)
    md = [
        f"# {doc.split(chr(10) + chr(10))[0].split(':')[0]}",
        "",
        doc.split("\n\n")[0].replace("\n", " "),
        "",
        f"Machine: {machine_line(machine_info())}  ",
        f"Command: {cmd}  ",
        f"{load_line(args.load_before, os.getloadavg())} (the machine is shared: times are upper bounds).  ",
        f"Rows per split: {setup.rows or 'all'}; samples {setup.samples}; bootstrap {setup.bootstrap}; "
        f"seed {setup.seed}; embedders {', '.join(args.embedders)}; heads scored by the "
        f"`{args.head_engine}` head engine; total {seconds / 60:.1f} min.  ",
        "Geometry: `minilm` is all-MiniLM-L6-v2 as it is (unrelated texts near cosine 0.1-0.3); "
        "`minilm@t5like` "
        "is a simulation of sentence-t5's anisotropy on it (every embedding moved toward one shared "
        "direction, "
        "calibrated so the best constant prompt's mean cosine is 0.86 as on the real leaderboard; "
        "`benchmarks/results/geometry.md`). Same samples, scored twice.  ",
        "Scores: mean cos^3 [bootstrap 95% interval]; *vs greedy*: paired difference [95% interval]; "
        "*tokens/row*: generated tokens of the samples a row uses; *s*: the generation time those tokens "
        "took "
        "(each pass's time shared by tokens) plus combining and scoring. `+ constant` appends the constant "
        "prompt's words the predictions lack (MeanPromptConfig). Rows `combination: ...` are the test split "
        "(tuned on validation; see `combination_<level>.md`).",
        "",
    ]
    for info in infos:
        part = frame[(frame.level == info["level"]) & (frame.embedder == info["embedder"])]
        md += [f"## Ambiguity {info['level']}, embedder {info['embedder']}", "",
               *[f"{n}  " for n in level_notes(info, setup)], "", md_table(part), ""]
    (out / f"{name}.md").write_text("\n".join(md))
    plot(frame, out / f"{name}.png")
    return [out / f"{name}.{ext}" for ext in ("md", "csv", "png")]


def plot(frame: pd.DataFrame, path: Path) -> None:
    """One panel per embedder: every strategy's score per ambiguity level, with its interval."""
    plt = pyplot()

    labels = list(dict.fromkeys(frame.strategy))
    levels = list(dict.fromkeys(frame.level))
    embedders = list(dict.fromkeys(frame.embedder))
    fig, axes = plt.subplots(1, len(embedders), figsize=(6 * len(embedders), 1.5 + 0.22 * len(labels)),
                             sharey=True, squeeze=False)
    for ax, embedder in zip(axes[0], embedders, strict=True):
        for k, level in enumerate(levels):
            part = frame[(frame.level == level) & (frame.embedder == embedder)]
            y = np.array([labels.index(s) for s in part.strategy]) + (k - (len(levels) - 1) / 2) * 0.3
            err = np.array([part.score - part.low, part.high - part.score])
            ax.errorbar(part.score, y, xerr=err, fmt="o", ms=3, capsize=2, label=f"ambiguity {level}")
        ax.set_title(embedder, fontsize=9)
        ax.set_xlabel("mean cos^3, bootstrap 95% CI (combination rows: test)", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(labels)), labels, fontsize=7)
    axes[0][0].invert_yaxis()
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
