"""Learned heads on a tiny base: training examples from samples, training lowers the loss, a saved head
serves the same predictions, the strategies use it, and the CLI trains and tunes with it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recoverlib.combine import CombineContext, VerifierConfig, combine_rows
from recoverlib.errors import RecoverlibError
from recoverlib.heads.cache import loaded
from recoverlib.heads.model import HEAD_META, load_head, read_info
from recoverlib.io import read_rows
from recoverlib.training.head_data import embedding_examples, verifier_examples
from recoverlib.training.heads import HeadTrainConfig, split_rows, train_head
from tests.heads.stand_ins import fake_samples


def test_verifier_examples_score_each_candidate_against_the_truth(examples, train_rows):
    by_row = {}
    for e in examples:
        by_row.setdefault(e.row, {})[e.candidate] = e.target[0]
    truth = {r.id: r.rewrite_prompt for r in train_rows}
    for row, got in by_row.items():
        assert got[truth[row]] == pytest.approx(1.0, abs=1e-5)  # the truth itself scores 1
        if len(got) > 1:  # the other row's prompt (unless it is the same) and the concatenation score less
            assert sorted(got.values())[-2] < 1.0 - 1e-5
    assert sum(len(got) > 1 for got in by_row.values()) > len(by_row) / 2
    with pytest.raises(RecoverlibError, match="has samples"):
        verifier_examples(train_rows, {}, None)


def test_embedding_examples_are_unit_embeddings_of_the_truth(train_rows, scorer):
    got = embedding_examples(train_rows[:5], scorer)
    emb = np.array([e.target for e in got])
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert got[0].candidate is None and got[0].original == train_rows[0].original_text


def test_split_keeps_a_rows_candidates_together(examples):
    train, held = split_rows(examples, 0.25, seed=0)
    assert held and train and not {e.row for e in train} & {e.row for e in held}
    assert split_rows(examples, 0.25, seed=0) == (train, held)


def test_training_lowers_the_loss_and_the_saved_head_serves_the_same(verifier, base, examples):
    hist = verifier.history
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    info = read_info(verifier.folder)
    assert (info.kind, info.dim, info.embedder) == ("verifier", 1, "minilm")
    head = load_head(verifier.folder)
    pairs = [(e.original, e.rewritten) for e in examples[:6]]
    got = head.predict(pairs, [e.candidate for e in examples[:6]])
    again = load_head(verifier.folder, model_path=base).predict(pairs, [e.candidate for e in examples[:6]])
    assert got.shape == (6,) and np.allclose(got, again, atol=1e-5)
    assert np.all(np.isfinite(got))
    with pytest.raises(RecoverlibError, match="takes"):
        head.predict(pairs)


def test_the_verifier_strategy_serves_a_trained_head(verifier, train_rows, scorer):
    rows = train_rows[:4]
    ctx = CombineContext(scorer=scorer, pairs={r.id: (r.original_text, r.rewritten_text) for r in rows})
    samples = fake_samples(train_rows)
    got = combine_rows(
        {r.id: samples[r.id] for r in rows}, VerifierConfig(path=str(verifier.folder)), ctx, progress=False
    )
    assert set(got) == {r.id for r in rows} and all(got.values())


def test_an_embedding_head_trains_with_a_cosine_loss(embedding_head, train_rows):
    result = embedding_head
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    pred = load_head(result.folder).predict([(train_rows[0].original_text, train_rows[0].rewritten_text)])
    assert pred.shape == (1, 384)


def test_heads_on_one_base_share_an_engine_and_keep_their_own_lora(
    verifier, embedding_head, train_rows, scorer
):
    pairs = [(r.original_text, r.rewritten_text) for r in train_rows[:5]]
    ctx = CombineContext(scorer=scorer, pairs={r.id: p for r, p in zip(train_rows, pairs, strict=False)})
    shared_v = loaded(ctx, str(verifier.folder), "verifier")
    shared_e = loaded(ctx, str(embedding_head.folder), "embedding")
    assert shared_v.engine is shared_e.engine  # one base in memory for both heads
    alone_e = load_head(embedding_head.folder)
    alone_v = load_head(verifier.folder)
    cands = [r.rewrite_prompt for r in train_rows[:5]]
    # loading the second LoRA into the shared engine changes neither head's outputs
    assert np.allclose(shared_e.predict(pairs), alone_e.predict(pairs), atol=1e-5)
    assert np.allclose(shared_v.predict(pairs, cands), alone_v.predict(pairs, cands), atol=1e-5)
    with pytest.raises(RecoverlibError, match="is a embedding head; the verifier strategy"):
        loaded(ctx, str(embedding_head.folder), "verifier")
    with pytest.raises(RecoverlibError, match="unknown head engine 'tgi'"):
        load_head(verifier.folder, engine="tgi")


def test_bad_settings_and_folders_are_one_line(tmp_path, examples, base):
    with pytest.raises(RecoverlibError, match="--head must be one of"):
        HeadTrainConfig(kind="judge")
    with pytest.raises(RecoverlibError, match="bad head settings"):
        HeadTrainConfig(epochs=0)
    with pytest.raises(RecoverlibError, match="not a head folder"):
        read_info(tmp_path)
    with pytest.raises(RecoverlibError, match="cannot train a embedding head"):
        train_head(base, examples, tmp_path / "x", "minilm", HeadTrainConfig(kind="embedding"))


def test_cli_trains_a_verifier_then_tune_and_combine_use_it(
    task, base, train_rows, tmp_path, scorer, capsys, monkeypatch
):
    import importlib

    from recoverlib.cli import main

    cli = importlib.import_module("recoverlib.cli.combine")
    own = cli._context
    monkeypatch.setattr(
        cli,
        "_context",
        lambda e, rows=None, engine="hf": CombineContext(scorer=scorer, pairs=own(e, rows).pairs,
                                                          head_engine=engine),
    )
    samples = tmp_path / "samples.jsonl"
    val = read_rows(task / "validation.csv", with_truth=True)
    lines = [
        {"id": i, "samples": [{"adapter": s.adapter, "index": s.index, "text": s.text} for s in got]}
        for i, got in {**fake_samples(train_rows), **fake_samples(val)}.items()
    ]
    samples.write_text("".join(json.dumps(x) + "\n" for x in lines))
    head = tmp_path / "head"
    assert (
        main(
            [
                "train",
                "--head",
                "verifier",
                "--model",
                str(base),
                "--train",
                str(task / "train.csv"),
                "--samples-file",
                str(samples),
                "--out",
                str(head),
                "--epochs",
                "1",
                "--lr",
                "3e-3",
                "--embedder",
                "minilm",
            ]
        )
        == 0
    )
    assert (head / HEAD_META).is_file() and "verifier head" in capsys.readouterr().out
    val_samples = tmp_path / "val.jsonl"
    val_samples.write_text("".join(json.dumps(x) + "\n" for x in lines if x["id"] in {r.id for r in val}))
    comb = tmp_path / "comb.json"
    tune = [
        "tune",
        "--samples-file",
        str(val_samples),
        "--truth",
        str(task / "validation.csv"),
        "--verifier",
        str(head),
        "--strategies",
        "verifier-rerank",
        "verifier-drop",
        "--bootstrap",
        "20",
        "--out",
        str(comb),
        "--embedder",
        "minilm",
    ]
    assert main(tune) == 2 and "needs --rows" in capsys.readouterr().err
    assert main(tune + ["--rows", str(task / "validation.csv")]) == 0
    table = capsys.readouterr().out
    assert "verifier-rerank" in table and "verifier-drop" in table
    sub = tmp_path / "sub.csv"
    assert (
        main(
            [
                "combine",
                "--samples-file",
                str(val_samples),
                "--combination",
                str(comb),
                "--rows",
                str(task / "validation.csv"),
                "--out",
                str(sub),
                "--embedder",
                "minilm",
            ]
        )
        == 0
    )
    assert len(sub.read_text().splitlines()) == len(val) + 1


def test_batches_keep_rows_whole_and_the_verifier_loss_ignores_a_rows_offset():
    import torch

    from recoverlib.training.heads import _batches, _loss

    rows = ["a", "a", "b", "c", "c", "c", "d"]
    got = list(_batches(rows, 3, np.random.default_rng(0)))
    assert sorted(i for idx, _ in got for i in idx) == list(range(7))
    for idx, grp in got:
        for i, g in zip(idx, grp, strict=True):  # same row, same group; different rows, different groups
            assert all((rows[i] == rows[j]) == (g == h) for j, h in zip(idx, grp, strict=True))
    target = torch.tensor([[0.2], [0.5], [0.9], [0.1]])
    group = torch.tensor([0, 0, 1, 1])
    shifted = target + torch.tensor([[0.3], [0.3], [-0.2], [-0.2]])  # a constant per row: same ranking
    assert float(_loss("verifier", shifted, target, group)) == pytest.approx(0.25 * 0.065, abs=1e-6)
    assert float(_loss("verifier", target, target, group)) == 0.0
