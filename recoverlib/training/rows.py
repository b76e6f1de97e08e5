"""Training rows: read and checked (one line for an empty text or prompt), primed, subset, and made into TRL's
prompt-completion dataset rendered by the recovery template."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from recoverlib.errors import RecoverlibError
from recoverlib.io import read_rows
from recoverlib.prompt import RecoveryTemplate, has_prime


def load_training_rows(path: str | Path, prime: str = "", what: str = "training"):
    """Rows with prompts from a CSV; every text and prompt must be non-empty (one-line error otherwise)."""

    rows = read_rows(path, with_truth=True)
    bad = [r.id for r in rows if r.problem or not (r.rewrite_prompt or "").strip()]
    if bad:
        raise RecoverlibError(
            f"{path}: {len(bad)} {what} row(s) have an empty text or rewrite_prompt (id "
            f"{', '.join(bad[:3])}); fix or drop them"
        )
    if not rows:
        raise RecoverlibError(f"{path}: no {what} rows")
    kept = [r for r in rows if has_prime(r.rewrite_prompt, prime)]
    if not kept:
        raise RecoverlibError(f"{path}: no rewrite_prompt starts with the prime {prime!r}")
    return kept


def subset(rows: Sequence, max_rows: int | None, seed: int) -> list:
    """At most ``max_rows`` rows, a seeded sample in the original order."""
    if max_rows is None or len(rows) <= max_rows:
        return list(rows)
    keep = sorted(random.Random(seed).sample(range(len(rows)), max_rows))
    return [rows[i] for i in keep]


def dedicated_pad(tokenizer) -> None:
    """Give the tokenizer a pad token that is not eos: with pad = eos, eos is masked and generation never
    stops."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    if tokenizer.unk_token is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
        # an existing token: no new embedding row, nothing to convert
        tokenizer.pad_token = tokenizer.unk_token
        return
    raise RecoverlibError(
        "the tokenizer has no pad or unk token distinct from eos; add a <pad> token to the base first"
    )


def to_dataset(tokenizer, rows, template: RecoveryTemplate, prime: str, max_length: int):
    """A TRL prompt-completion dataset: ``prompt`` rendered by ``template``, ``completion`` its target."""
    from datasets import Dataset

    prompts = [
        template.render_fitted(tokenizer, r.original_text, r.rewritten_text, max_length - 64, prime)[0]
        for r in rows
    ]
    return Dataset.from_dict(
        {"prompt": prompts, "completion": [template.completion(r.rewrite_prompt, prime) for r in rows]}
    )


def rows_of(source, prime: str, what: str):
    if isinstance(source, (str, Path)):
        return load_training_rows(source, prime, what)
    kept = [r for r in source if has_prime(r.rewrite_prompt, prime)]
    if not kept:
        raise RecoverlibError(f"no {what} rewrite_prompt starts with the prime {prime!r}")
    return kept
