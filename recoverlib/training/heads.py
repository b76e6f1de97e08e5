"""Training a learned head (:mod:`recoverlib.heads.model`): a LoRA on the base plus a linear head on the last
token, trained together with a plain seeded torch loop (squared error for a verifier, cosine loss for an
embedding head), the best epoch on held-out rows kept.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recoverlib.errors import RecoverlibError
from recoverlib.heads.hf_engine import pooled
from recoverlib.heads.model import (
    KINDS,
    HeadInfo,
    load_base_model,
    load_tokenizer,
    render_inputs,
    save_head,
)
from recoverlib.prompt import RecoveryTemplate
from recoverlib.training.head_data import HeadExample
from recoverlib.training.lora import ATTENTION_MODULES, preserved_rng

log = logging.getLogger("recoverlib")


@dataclass(frozen=True)
class HeadTrainConfig:
    """LoRA and loop settings; defaults suit the tiny model (about a minute on 2 CPU cores for 4k examples).

    ``holdout``: fraction of rows (not examples: a row's candidates stay together) kept out to pick the
    epoch."""

    kind: str = "verifier"
    rank: int = 8
    alpha: float = 16.0
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 32
    max_length: int = 320
    holdout: float = 0.1
    template: str = "auto"
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise RecoverlibError(f"--head must be one of {', '.join(KINDS)} (got {self.kind!r})")
        if min(self.rank, self.epochs, self.batch_size) < 1 or self.lr <= 0 or not 0 <= self.holdout < 1:
            raise RecoverlibError(
                f"bad head settings: rank {self.rank}, epochs {self.epochs}, batch {self.batch_size}, lr "
                f"{self.lr}, holdout {self.holdout} (counts >= 1, lr > 0, 0 <= holdout < 1)"
            )


@dataclass(frozen=True)
class HeadResult:
    folder: Path
    best_epoch: int
    history: list[dict] = field(default_factory=list)  # per epoch: train_loss, val_loss
    examples: int = 0
    seconds: float = 0.0


def split_rows(examples: Sequence[HeadExample], holdout: float, seed: int):
    """(train, held-out) examples, split by row with a seeded shuffle."""
    rows = sorted({e.row for e in examples})
    random.Random(seed).shuffle(rows)
    held = set(rows[: int(round(len(rows) * holdout))]) if len(rows) > 1 else set()
    return [e for e in examples if e.row not in held], [e for e in examples if e.row in held]


def _loss(kind: str, out, target, group):
    """Embedding: 1 - cosine. Verifier: squared error of the scores centred within each row (the strategies
    compare a row's candidates with each other only), plus a quarter of the plain squared error (keeps the
    scale). ``group``: (batch,) row index of each example within the batch."""
    import torch

    if kind == "embedding":
        return (1 - torch.nn.functional.cosine_similarity(out, target, dim=1)).mean()
    pred, want = out[:, 0], target[:, 0]
    counts = torch.bincount(group).clamp(min=1).to(pred.dtype)

    def centred(x):
        return x - (torch.zeros_like(counts).index_add(0, group, x) / counts)[group]

    mse = torch.nn.functional.mse_loss
    return mse(centred(pred), centred(want)) + 0.25 * mse(pred, want)


def _batches(rows: Sequence[str], batch_size: int, rng: np.random.Generator | None):
    """Index arrays of whole rows (a row's examples stay in one batch, for the within-row loss), about
    ``batch_size`` examples each, with each example's row number within the batch; rows shuffled by
    ``rng``."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r, []).append(i)
    order = list(groups.values())
    if rng is not None:
        order = [order[k] for k in rng.permutation(len(order))]
    idx, grp = [], []
    for g in order:
        idx += g
        grp += [grp[-1] + 1 if grp else 0] * len(g)
        if len(idx) >= batch_size:
            yield np.array(idx), np.array(grp)
            idx, grp = [], []
    if idx:
        yield np.array(idx), np.array(grp)


def _run_epoch(kind, model, head, inputs, targets, rows, batch_size, pad_id, opt=None, rng=None) -> float:
    """One pass: a training epoch with ``opt`` (``rng`` shuffles), else the held-out loss; the mean loss."""
    import torch

    model.train(opt is not None)
    total = 0.0
    bar = _bar(len(inputs), f"head {kind} " + ("training" if opt else "held out"))
    with torch.set_grad_enabled(opt is not None):
        for idx, grp in _batches(rows, batch_size, rng):
            group = torch.tensor(grp, device=targets.device)
            out = head(pooled(model, [inputs[i] for i in idx], pad_id))
            loss = _loss(kind, out, targets[torch.as_tensor(idx, device=targets.device)], group)
            if opt is not None:
                opt[0].zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(opt[2], 1.0)
                opt[0].step()
                opt[1].step()
            total += loss.item() * len(idx)
            bar.update(len(idx))
    bar.close()
    return total / max(1, len(inputs))


def _encode(part, tokenizer, template, config: HeadTrainConfig):
    import torch

    cands = None if config.kind == "embedding" else [e.candidate for e in part]
    pairs = [(e.original, e.rewritten) for e in part]
    inputs = render_inputs(tokenizer, template, pairs, cands, config.max_length)
    return inputs, torch.tensor([e.target for e in part], dtype=torch.float32), [e.row for e in part]


def _new_head(model, targets):
    import torch

    head = torch.nn.Linear(model.get_decoder().config.hidden_size, targets.shape[1]).to(targets.device)
    with torch.no_grad():
        head.weight.mul_(0.1)
        head.bias.copy_(targets.mean(dim=0))  # start at the mean target: early steps learn the differences
    return head


def train_head(
    model_path: str | Path,
    examples: Sequence[HeadExample],
    out_dir: str | Path,
    embedder: str,
    config: HeadTrainConfig | None = None,
) -> HeadResult:
    """Train a head of ``config.kind`` on ``examples`` over the base at ``model_path``; save the best epoch
    (by held-out loss, else the last) to ``out_dir``. ``embedder``: the metric embedder the targets were made
    with (recorded; a strategy refuses another)."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    config = config or HeadTrainConfig()
    if not examples:
        raise RecoverlibError("no training examples for the head")
    if (examples[0].candidate is None) != (config.kind == "embedding"):
        raise RecoverlibError(
            f"examples for a {'verifier' if examples[0].candidate else 'embedding'} head "
            f"cannot train a {config.kind} head"
        )
    start = time.perf_counter()
    tokenizer = load_tokenizer(model_path)
    template = RecoveryTemplate(kind=config.template).for_tokenizer(
        tokenizer, f"the tokenizer of {model_path}"
    )
    train, held = split_rows(examples, config.holdout, config.seed)
    (tr_in, tr_t, tr_rows), (va_in, va_t, va_rows) = (
        _encode(p, tokenizer, template, config) for p in (train, held)
    )
    pad = tokenizer.pad_token_id
    with preserved_rng():
        torch.manual_seed(config.seed)
        lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=list(ATTENTION_MODULES))
        model = get_peft_model(load_base_model(model_path), lora)
        device = next(model.parameters()).device
        tr_t, va_t = tr_t.to(device), va_t.to(device)
        head = _new_head(model, tr_t)
        params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        steps = config.epochs * -(-len(tr_in) // config.batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / max(1, steps)))
        rng = np.random.default_rng(config.seed)
        history, best = [], (None, 0, None)
        for epoch in range(1, config.epochs + 1):
            loss = _run_epoch(
                config.kind,
                model,
                head,
                tr_in,
                tr_t,
                tr_rows,
                config.batch_size,
                pad,
                (opt, sched, params),
                rng,
            )
            entry = {"epoch": epoch, "train_loss": round(loss, 6)}
            if va_in:
                entry["val_loss"] = round(
                    _run_epoch(config.kind, model, head, va_in, va_t, va_rows, config.batch_size, pad), 6
                )
            history.append(entry)
            log.info("head epoch %d: %s", epoch, entry)
            if best[0] is None or entry.get("val_loss", 0.0) <= best[0]:
                state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
                best = (
                    entry.get("val_loss", 0.0),
                    epoch,
                    (state, {k: v.clone() for k, v in head.state_dict().items()}),
                )
        set_peft_model_state_dict(model, best[2][0])
        head.load_state_dict(best[2][1])
    model.eval()
    info = HeadInfo(
        kind=config.kind,
        dim=int(tr_t.shape[1]),
        embedder=embedder,
        base=str(Path(model_path).resolve()),
        template=template.kind,
        max_length=config.max_length,
    )
    save_head(Path(out_dir), model, head, info)
    return HeadResult(Path(out_dir), best[1], history, len(examples), round(time.perf_counter() - start, 1))


def _bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", leave=False)
