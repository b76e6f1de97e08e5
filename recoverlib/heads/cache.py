"""Heads loaded once per combine context, and their outputs cached there, so a tune that tries several
verifier strategies loads the head and scores each (row, candidate) once."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from recoverlib.errors import RecoverlibError
from recoverlib.heads.engines import make_head_engine
from recoverlib.heads.model import HeadInfo, LoadedHead, load_head, read_info
from recoverlib.metric import split_embedder


def loaded(ctx, path: str, kind: str) -> LoadedHead:
    """The head at ``path`` (loaded on first use into ``ctx.heads``, served by ``ctx.head_engine``; heads on
    one base share its engine); one line when its kind or its embedder does not fit ``ctx``."""
    key = ("model", path)
    info = head_info(ctx, path)
    if info.kind != kind:
        raise RecoverlibError(f"{path} is a {info.kind} head; the {kind} strategy needs a {kind} head")
    # a verifier's scores are of one geometry; an embedding head's prediction is moved into any
    want = info.embedder if kind == "verifier" else split_embedder(info.embedder)[0]
    have = ctx.embedder_name if kind == "verifier" else split_embedder(ctx.embedder_name)[0]
    if want != have:
        raise RecoverlibError(
            f"{path} was trained for embedder {want!r}, this run scores with {have!r}: "
            "train a head for this embedder"
        )
    if key not in ctx.heads:
        engine_key = ("engine", ctx.head_engine, str(Path(info.base).resolve()))
        if engine_key not in ctx.heads:
            ctx.heads[engine_key] = make_head_engine(ctx.head_engine, info.base)
        ctx.heads[key] = load_head(path, engine=ctx.heads[engine_key])
    return ctx.heads[key]


def close_heads(ctx) -> None:
    """Close the head engines ``ctx`` started and forget its heads and their outputs (a vLLM head engine holds
    the process environment vLLM wrote until it closes)."""
    for key, value in list(ctx.heads.items()):
        if key[0] == "engine":
            value.close()
    ctx.heads.clear()


def verifier_scores(ctx, path: str, row: str, texts: Iterable[str]) -> np.ndarray:
    """The verifier's predicted score of each text for ``row`` (cached per row and text)."""
    texts = list(texts)
    cache = ctx.heads.setdefault(("scores", path), {})
    todo = list(dict.fromkeys((row, t) for t in texts if (row, t) not in cache))
    if todo:
        score_many(ctx, path, todo)
    return np.array([cache[(row, t)] for t in texts], dtype=np.float64)


def score_many(ctx, path: str, items: list[tuple[str, str]]) -> None:
    """Score many (row, text) items in one batched pass into the cache."""
    cache = ctx.heads.setdefault(("scores", path), {})
    items = [i for i in dict.fromkeys(items) if i not in cache]
    if not items:
        return
    head = loaded(ctx, path, "verifier")
    got = head.predict([ctx.pair(r) for r, _ in items], [t for _, t in items])
    cache.update(zip(items, map(float, got), strict=True))


def predicted_embeddings(ctx, path: str, rows: Iterable[str]) -> dict[str, np.ndarray]:
    """Unit predicted embeddings of the rows' targets, in ``ctx``'s geometry (cached per row)."""
    cache = ctx.heads.setdefault(("embeddings", path), {})
    todo = [r for r in dict.fromkeys(rows) if r not in cache]
    if todo:
        head = loaded(ctx, path, "embedding")
        raw = head.predict([ctx.pair(r) for r in todo])
        raw = raw / np.clip(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12, None)
        moved = ctx.get_scorer().apply_modes(raw.astype(np.float32))
        moved = moved / np.clip(np.linalg.norm(moved, axis=1, keepdims=True), 1e-12, None)
        cache.update(zip(todo, moved, strict=True))
    return cache


def head_info(ctx, path: str) -> HeadInfo:
    """The :class:`HeadInfo` of the head folder at ``path`` (read once per context; a loaded head's own)."""
    key = ("info", path)
    if key not in ctx.heads:
        model = ctx.heads.get(("model", path))
        ctx.heads[key] = model.info if model is not None else read_info(path)
    return ctx.heads[key]


def judged_scores(ctx, path: str, row: str, texts: Iterable[str]) -> np.ndarray:
    """How well each text fits ``row`` by the head at ``path``: a verifier's predicted metric score, or for
    an embedding head the metric score against its predicted embedding (cos^3 in ``ctx``'s geometry): both
    estimate the score a text gets against the unknown truth."""
    texts = list(texts)
    if head_info(ctx, path).kind == "verifier":
        return verifier_scores(ctx, path, row, texts)
    target = predicted_embeddings(ctx, path, [row])[row]
    return ctx.sharp(ctx.embed(texts), target[None, :])[:, 0].astype(np.float64)


def judge_many(ctx, path: str, items: list[tuple[str, str]]) -> None:
    """Whatever :func:`judged_scores` needs for many (row, text) items, in one batched pass per head."""
    if head_info(ctx, path).kind == "verifier":
        score_many(ctx, path, items)
    else:
        predicted_embeddings(ctx, path, [r for r, _ in items])
