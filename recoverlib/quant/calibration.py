"""Calibration texts for GPTQ: rows of a CSV rendered as recovery prompts, a text column, or built-in
examples."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from recoverlib.errors import RecoverlibError
from recoverlib.io import read_table
from recoverlib.prompt import RecoveryTemplate
from recoverlib.tiny.corpus import corpus_texts

MAX_TEXTS = 256


def calibration_texts(source: str | Path | Sequence[str] | None, model_path: Path, seed: int = 0,
                      template: str = "auto") -> list[str]:
    """Up to ``MAX_TEXTS`` texts, chosen with ``seed`` when the source has more; rows become recovery prompts
    of kind ``template`` (auto: chat where the model's tokenizer has a chat template, else plain)."""
    if source is None:
        texts = _builtin(model_path, template)
    elif isinstance(source, str | Path):
        texts = _from_csv(Path(source), model_path, template)
    else:
        texts = [str(t) for t in source]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise RecoverlibError("calibration: no non-empty texts")
    if len(texts) > MAX_TEXTS:
        texts = random.Random(seed).sample(texts, MAX_TEXTS)
    return texts


def _builtin(model_path: Path, template: str) -> list[str]:
    lines = corpus_texts()
    pairs = list(zip(lines, lines[1:] + lines[:1], strict=True))
    return lines + _render(pairs, model_path, template)


def _from_csv(path: Path, model_path: Path, template: str) -> list[str]:
    import pandas as pd

    if not path.is_file():
        raise RecoverlibError(f"calibration {path}: no such file")
    if "text" in pd.read_csv(path, nrows=0).columns:
        return pd.read_csv(path, dtype=str)["text"].dropna().tolist()
    frame = read_table(path, ("id", "original_text", "rewritten_text"))
    rows = frame.dropna(subset=["original_text", "rewritten_text"])
    return _render(
        list(zip(rows["original_text"], rows["rewritten_text"], strict=True)), model_path, template
    )


def calibration_tokenizer(model_path: Path):
    """The model folder's tokenizer, which GPTQ calibrates through; one line when the folder has none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RecoverlibError(
            f"{model_path}: no usable tokenizer ({first}); GPTQ calibrates through the model's"
            " tokenizer: copy tokenizer.json and tokenizer_config.json into the folder"
        ) from None


def _render(pairs: list[tuple[str, str]], model_path: Path, kind: str) -> list[str]:
    tok = calibration_tokenizer(model_path)
    template = RecoveryTemplate(kind=kind).for_tokenizer(tok, f"the tokenizer of {model_path}")
    return [template.render(tok, o, r) for o, r in pairs]
