"""The learned heads of the ensemble-quality benchmark: per level, a verifier per metric geometry (its target,
the metric score, depends on it) and one embedding head (it predicts the embedder's own embedding; each
geometry moves the prediction), trained on the model's own samples on a slice of the training split; and
what they cost (training seconds, served weights, resident memory added by loading one, scoring time)."""

from __future__ import annotations

import time
from dataclasses import dataclass
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


QUICK_HEADS = HeadSetup(rows=16, epochs=1)


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def head_cost(folder: Path) -> dict:
    """Weights of the served head (base + LoRA + linear, MB) and the resident memory loading it adds (MB)."""
    from recoverlib.heads.model import load_head

    before = rss_mb()
    head = load_head(folder)
    params = sum(p.numel() * p.element_size() for p in head.engine.model.parameters())
    params += sum(p.numel() * p.element_size() for p in head.head.parameters())
    return {"weights_mb": round(params / 2**20, 2), "load_rss_mb": round(rss_mb() - before, 1)}


def train_heads(
    model_dir: Path, train_samples: dict, contexts: dict, hs: HeadSetup, seed: int, out: Path
) -> dict:
    """``{"embedding": {...}, "verifier": {embedder: {...}}}``: each head's folder, examples, seconds and
    cost. ``train_samples``: ``id -> samples`` of the training rows (every adapter's greedy and samples)."""
    rows = [r for r in read_rows(model_dir / "task" / "train.csv", with_truth=True) if r.id in train_samples]
    config = dict(epochs=hs.epochs, lr=hs.lr, batch_size=hs.batch_size, max_length=hs.max_length, seed=seed)
    model = model_dir / "model"
    got = {"verifier": {}}
    plain = next(iter(contexts.values())).get_scorer()
    start = time.perf_counter()
    examples = embedding_examples(rows, plain)
    res = train_head(
        model, examples, out / "embedding", plain.name, HeadTrainConfig(kind="embedding", **config)
    )
    got["embedding"] = {
        "path": str(res.folder),
        "examples": res.examples,
        "train_s": time.perf_counter() - start,
        "history": res.history,
        **head_cost(res.folder),
    }
    for embedder, ctx in contexts.items():
        start = time.perf_counter()
        examples = verifier_examples(rows, train_samples, ctx)
        name = embedder.replace("@", "_")
        res = train_head(
            model, examples, out / f"verifier-{name}", embedder, HeadTrainConfig(kind="verifier", **config)
        )
        got["verifier"][embedder] = {
            "path": str(res.folder),
            "examples": res.examples,
            "train_s": time.perf_counter() - start,
            "history": res.history,
            **head_cost(res.folder),
        }
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
        lines.append(
            f"Head **{kind}**: {info['examples']} training examples from {source}, trained "
            f"{info['train_s']:.0f} s (held-out loss by epoch {[h.get('val_loss') for h in info['history']]}"
            "); "
            "served weights "
            f"{info['weights_mb']} MB, loading adds {info['load_rss_mb']} MB resident."
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
