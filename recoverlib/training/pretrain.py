"""Full-parameter training of the tiny Mixtral on the synthetic task (a plain torch loop: fastest on a CPU).

The base learns recovery itself (as a real instruct model comes knowing language), so that LoRA adapters
trained on it start from a model that already knows the task. Loss is on the completion only, rendered by the
same :class:`RecoveryTemplate` the engines and LoRA training use. Randomness comes from explicit
``torch.Generator`` seeds; the global RNG is never touched.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from recoverlib.errors import RecoverlibError
from recoverlib.prompt import INSTRUCTION, RESPONSE_PREFIX, RecoveryTemplate
from recoverlib.tiny.model import TinySpec, _init_, mixtral_config, train_tokenizer

log = logging.getLogger("recoverlib")


@dataclass(frozen=True)
class PretrainConfig:
    """Plain-loop settings. Defaults: about 1 min per epoch on 6,000 rows on 2 CPU cores."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 2e-3
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    max_length: int = 512  # tokens per sequence; prompts are fitted to leave room for the completion
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise RecoverlibError(
                f"bad pretrain config: epochs {self.epochs}, batch {self.batch_size}, lr {self.lr}"
            )


def task_tokenizer(texts: Sequence[str], vocab_size: int):
    """A tiny-model tokenizer whose BPE merges are learned from the task's own text plus the template.

    The template is repeated once per text, as in the training sequences, so its words get merges of their
    own.
    """

    template = " ".join([INSTRUCTION, "Original text:", "Rewritten text:", RESPONSE_PREFIX])
    return train_tokenizer(vocab_size, [template] * len(texts) + list(texts))


def new_model(tokenizer, spec=None, seed: int = 0):
    """A fresh tiny Mixtral for ``tokenizer`` (fp32), every weight drawn from ``torch.Generator(seed)``."""
    import torch
    from transformers import MixtralForCausalLM

    spec = spec or TinySpec()
    with torch.random.fork_rng(devices=[]):  # the constructor's own init draws from the global RNG
        model = MixtralForCausalLM(mixtral_config(spec, tokenizer))
    _init_(model, torch.Generator().manual_seed(seed), std=0.02)
    return model


def encode_examples(tokenizer, rows, template: RecoveryTemplate, max_length: int, prime: str = ""):
    """``(input_ids, n_prompt_tokens)`` per row: rendered prompt + completion + eos, as LoRA training builds
    it."""
    eos = tokenizer.eos_token
    out = []
    for row in rows:
        prompt, _ = template.render_fitted(
            tokenizer, row.original_text, row.rewritten_text, max_length - 64, prime
        )
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full = tokenizer(
            prompt + template.completion(row.rewrite_prompt, prime) + eos, add_special_tokens=False
        )
        out.append((full["input_ids"][:max_length], len(p_ids)))
    return out


def _batches(examples, batch_size: int, generator) -> list[list[int]]:
    """Shuffled batches of similar length: shuffle, sort within windows of 8 batches, shuffle the batches."""
    import torch

    order = torch.randperm(len(examples), generator=generator).tolist()
    window = batch_size * 8
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(examples[i][0]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def collate(examples, indices: Sequence[int], pad_id: int):
    """Right-padded ``input_ids, attention_mask, labels`` (labels -100 over the prompt and padding)."""
    import torch

    width = max(len(examples[i][0]) for i in indices)
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for r, i in enumerate(indices):
        seq, n_prompt = examples[i]
        ids[r, : len(seq)] = torch.tensor(seq)
        mask[r, : len(seq)] = 1
        labels[r, n_prompt : len(seq)] = torch.tensor(seq[n_prompt:])
    return ids, mask, labels


def eval_loss(model, examples, pad_id: int, batch_size: int = 64) -> float:
    """Mean completion-token loss (nats/token) over ``examples``."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            ids, mask, labels = collate(
                examples, range(start, min(start + batch_size, len(examples))), pad_id
            )
            n = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, attention_mask=mask, labels=labels).loss) * n
            count += n
    model.train()
    return total / max(count, 1)


def pretrain(
    model, tokenizer, train_rows, validation_rows=(), config: PretrainConfig | None = None
) -> list[dict]:
    """Train every parameter of ``model`` (fp32, in place) on rows with prompts; returns per-epoch stats.

    Each stat: ``{"epoch", "train_loss", "val_loss"}`` (nats per completion token). AdamW, linear warmup then
    cosine decay to 0, batches from a ``torch.Generator`` seeded with ``config.seed``.
    """
    import torch

    config = config or PretrainConfig()
    template = RecoveryTemplate()
    train = encode_examples(tokenizer, train_rows, template, config.max_length)
    val = encode_examples(tokenizer, validation_rows, template, config.max_length)
    gen = torch.Generator().manual_seed(config.seed)
    steps = config.epochs * math.ceil(len(train) / config.batch_size)
    warm = max(1, int(steps * config.warmup_fraction))
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))
        ),
    )
    model.train()
    stats: list[dict] = []
    bar = tqdm(total=steps, desc="train tiny base", unit="step")
    for epoch in range(1, config.epochs + 1):
        losses = []
        for idx in _batches(train, config.batch_size, gen):
            ids, mask, labels = collate(train, idx, tokenizer.pad_token_id)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        stat = {"epoch": epoch, "train_loss": sum(losses) / len(losses)}
        if val:
            stat["val_loss"] = eval_loss(model, val, tokenizer.pad_token_id)
        log.info("tiny base epoch %d: %s", epoch, stat)
        stats.append(stat)
    bar.close()
    model.eval()
    return stats
