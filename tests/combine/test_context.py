import numpy as np

from recoverlib.combine import CombineContext, ConcatConfig, MedoidConfig, combine, combine_rows

from .conftest import rows_of


class CountingScorer:
    """Embeds by letter counts and records every batch, to see what is embedded when."""

    def __init__(self):
        self.batches = []

    def embed(self, texts):
        self.batches.append(list(texts))
        return np.array([[t.count(c) + 0.1 for c in "aeiou"] for t in texts], dtype=np.float32)


def test_texts_are_embedded_once_in_one_batch_across_rows():
    scorer = CountingScorer()
    ctx = CombineContext(scorer=scorer)
    rows = {"1": rows_of("aa", "ee", "aa"), "2": rows_of("ee", "ii", "oo"), "3": []}
    combine_rows(rows, MedoidConfig(), ctx, progress=False)
    assert scorer.batches == [["aa", "ee", "ii", "oo"]]
    combine_rows(rows, MedoidConfig(), ctx, progress=False)
    assert len(scorer.batches) == 1
    assert np.allclose(np.linalg.norm(ctx.embed(["aa", "zz"]), axis=1), 1.0)
    ctx.embed(["uu"], remember=False)
    assert "uu" not in ctx._vectors


def test_strategies_that_do_not_embed_never_load_a_model():
    ctx = CombineContext(embedder="/no/such/model")
    assert combine(rows_of("a", "b"), ConcatConfig(), ctx) == "a b"
    assert combine_rows({"1": rows_of("a")}, ConcatConfig(), ctx, progress=False) == {"1": "a"}
    assert ctx.scorer is None


class _Engine:
    closed = 0

    def close(self):
        self.closed += 1


def test_closing_a_context_closes_the_head_engines_it_started():
    engine = _Engine()
    with CombineContext() as ctx:
        ctx.heads[("engine", "vllm", "/base")] = engine
        ctx.heads[("model", "/head")] = object()  # a head on it: dropped, not closed itself
    assert engine.closed == 1 and ctx.heads == {}
    ctx.close()  # again: nothing left to close
    assert engine.closed == 1
