"""The learned heads of the ensemble-quality benchmark: per level, a verifier per metric geometry (its target,
the metric score, depends on it), trained on the model's own samples on a slice of the training split, and
one embedding head (it predicts the embedder's own embedding; each geometry moves the prediction), trained on
the training split's truths (every row by default: they cost no sampling); and what they cost (training
seconds, served weights, resident memory added by loading one, scoring time).

A head is trained once per (settings, examples): its folder keeps a stamp of both, and a later run with the
same ones reuses it (the stamp also keeps the training seconds and history the tables report)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from recoverlib.io import read_rows
from recoverlib.training.head_data import embedding_examples, verifier_examples
from recoverlib.training.heads import HeadTrainConfig, train_head


@dataclass(frozen=True)
class HeadSetup:
    """Rows of the training split sampled for the heads, and the heads' training settings."""

    rows: int = 300
    epochs: int = 2
    lr: float = 2e-3
    batch_size: int = 32
    max_length: int = 320
    embedding_rows: int | None = None  # training rows whose truths the embedding head learns (None: all)
    embedding_epochs: int = 4


QUICK_HEADS = HeadSetup(rows=16, epochs=1, embedding_rows=16, embedding_epochs=1)
STAMP = "bench_stamp.json"


def examples_digest(examples) -> str:
    """A digest of training examples (rows, texts, targets to 6 decimals)."""
    h = hashlib.sha1()
    for e in examples:
        h.update(json.dumps([e.row, e.original, e.rewritten, e.candidate, [round(x, 6) for x in e.target]])
                 .encode())
    return h.hexdigest()


def trained(model: Path, examples, out: Path, embedder: str, config: HeadTrainConfig) -> dict:
    """Train a head (or reuse the one in ``out`` trained on the same examples with the same settings):
    folder, examples, seconds, history."""
    stamp = {"config": asdict(config), "embedder": embedder, "model": str(model),
             "examples": examples_digest(examples)}
    saved = out / STAMP
    if saved.is_file():
        old = json.loads(saved.read_text())
        if old.get("stamp") == stamp:
            return {**old["result"], "reused": True}
    start = time.perf_counter()
    res = train_head(model, examples, out, embedder, config)
    result = {"path": str(res.folder), "examples": res.examples, "train_s": time.perf_counter() - start,
              "history": res.history}
    saved.write_text(json.dumps({"stamp": stamp, "result": result}, indent=1) + "\n")
    return result


# run in a fresh process: in the benchmark's own, memory freed by earlier work hides what a load adds
COST_SCRIPT = """
import json, sys
import psutil, peft, torch, transformers  # imported first: their own memory is not the head's
from recoverlib.heads.model import load_head
proc = psutil.Process()
before = proc.memory_info().rss
head = load_head(sys.argv[1])
params = sum(p.numel() * p.element_size() for p in head.engine.model.parameters())
params += sum(p.numel() * p.element_size() for p in head.head.parameters())
print(json.dumps({"weights_mb": round(params / 2**20, 2),
                  "load_rss_mb": round((proc.memory_info().rss - before) / 2**20, 1)}))
"""


def head_cost(folder: Path) -> dict:
    """Weights of the served head (base + LoRA + linear, MB) and the resident memory loading it adds (MB),
    measured in a fresh process (the HF head engine)."""
    done = subprocess.run([sys.executable, "-c", COST_SCRIPT, str(folder)], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def train_heads(
    model_dir: Path, train_samples: dict, contexts: dict, hs: HeadSetup, seed: int, out: Path
) -> dict:
    """``{"embedding": {...}, "verifier": {embedder: {...}}}``: each head's folder, examples, seconds and
    cost. ``train_samples``: ``id -> samples`` of the training rows (every adapter's greedy and samples)."""
    every = read_rows(model_dir / "task" / "train.csv", with_truth=True)
    rows = [r for r in every if r.id in train_samples]
    config = dict(lr=hs.lr, batch_size=hs.batch_size, max_length=hs.max_length, seed=seed)
    model = model_dir / "model"
    got = {"verifier": {}}
    plain = next(iter(contexts.values())).get_scorer()
    examples = embedding_examples(every[: hs.embedding_rows], plain)
    head = HeadTrainConfig(kind="embedding", epochs=hs.embedding_epochs, **config)
    res = trained(model, examples, out / "embedding", plain.name, head)
    got["embedding"] = {**res, **head_cost(Path(res["path"]))}
    for embedder, ctx in contexts.items():
        examples = verifier_examples(rows, train_samples, ctx)
        name = embedder.replace("@", "_")
        head = HeadTrainConfig(kind="verifier", epochs=hs.epochs, **config)
        res = trained(model, examples, out / f"verifier-{name}", embedder, head)
        got["verifier"][embedder] = {**res, **head_cost(Path(res["path"]))}
    return got


def head_notes(heads: dict, embedder: str, checks: dict, train_gen_s: float) -> list[str]:
    """Markdown lines: each head's training and cost, and the goal check on test."""
    lines = []
    for kind, info in (("verifier", heads["verifier"][embedder]), ("embedding", heads["embedding"])):
        c = checks.get(kind)
        source = (
            f"the model's own samples on the training split (sampling them {train_gen_s:.0f} s)"
            if kind == "verifier"
            else "the training split's truths"
        )
        when = " (in an earlier run: same examples, same settings)" if info.get("reused") else ""
        losses = [h.get("val_loss") for h in info["history"]]
        lines.append(
            f"Head **{kind}**: {info['examples']} training examples from {source}, trained "
            f"{info['train_s']:.0f} s{when} (held-out loss by epoch {losses}); "
            f"served weights {info['weights_mb']} MB, loading it adds {info['load_rss_mb']} MB resident "
            "(a fresh process, the model code it imports included)."
            + (
                f" Test: tuned **{c['strategy']}** {c['score']:.4f} vs best fixed **{c['fixed']}** "
                f"{c['fixed_score']:.4f}: {c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]; "
                f"goal (>= +0.01, interval above 0): **{c['goal']}**; its slowest strategy "
                f"{c['s_per_row'] * 1000:.1f} ms/row "
                "(candidates, head scoring, mbr; the first of a head also loads it)."
                if c
                else ""
            )
        )
    return lines
