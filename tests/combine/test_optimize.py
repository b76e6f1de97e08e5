import numpy as np
import pandas as pd
import pytest

from recoverlib.cli import main
from recoverlib.combine.search import (
    SearchConfig,
    beam_search,
    holdout_split,
    optimize_prompt,
    search_suffix,
    token_vocabulary,
    word_vocabulary,
)
from recoverlib.errors import RecoverlibError

from .synth import FAMILIES, make_split

PROMPTS = [w for fam in FAMILIES for w in fam]


def test_word_vocabulary_most_frequent_first():
    assert word_vocabulary(["the text, the", "a text"], 2) == ["the", "text"]


def test_beam_search_on_a_hand_scored_toy():
    # Score: how many of the target words the string holds, minus a length cost; greedy finds them in order.
    target = {"make", "text", "short"}

    def score(texts):
        return np.array([len(target & set(t.split())) - 0.01 * len(t.split()) for t in texts])

    got = beam_search(score, ["short", "make", "text", "zebra"], SearchConfig(steps=10), progress=False)
    assert set(got.text.split()) == target and got.history == sorted(got.history)
    assert len(got.history) == 4  # three useful steps, then one that finds nothing better and stops


def test_screen_scores_only_its_shortlist_on_every_row():
    # The screen ranks "make" and "text" first; only those two reach the full score, so "short" is never
    # tried.
    full_calls = []

    def score(texts):
        full_calls.append(list(texts))
        return np.array([len({"make", "text", "short"} & set(t.split())) for t in texts], dtype=float)

    def screen(texts):
        return np.array([len({"make", "text"} & set(t.split())) for t in texts], dtype=float)

    cfg = SearchConfig(steps=1, shortlist=2)
    got = beam_search(score, ["short", "make", "text", "zebra"], cfg, progress=False, screen=screen)
    assert sorted(full_calls[-1]) == ["make", "text"] and got.text in ("make", "text")
    whole = beam_search(score, ["short", "make", "text", "zebra"], cfg, progress=False)
    assert whole.score == got.score  # each step's best among the shortlist is as good here


def test_screened_suffix_search_is_seeded_and_never_lowers_the_score(ctx):
    preds = ["Make it short.", "Pirate it.", "Formal now.", "Poem please."]
    truths = ["Shorten this text.", "Make it sound like a pirate.", "Make it formal.", "Rewrite as a poem."]
    cfg = SearchConfig(steps=2, vocab_size=24, seed=3, screen=2, shortlist=4)
    one = search_suffix(preds, truths, ctx, cfg, progress=False)
    assert one.history == sorted(one.history)
    assert one == search_suffix(preds, truths, ctx, cfg, progress=False)


@pytest.mark.parametrize("beam", [1, 2])
def test_train_score_never_decreases_and_repeats_for_a_seed(ctx, beam):
    cfg = SearchConfig(steps=4, beam=beam, vocab_size=12, seed=5)
    one = optimize_prompt(PROMPTS, ctx, cfg, progress=False)
    assert all(b >= a for a, b in zip(one.history, one.history[1:], strict=False))
    assert one.score == one.history[-1] and one.text
    two = optimize_prompt(PROMPTS, ctx, cfg, progress=False)
    assert (two.text, two.history) == (one.text, one.history)


def test_token_vocabulary_is_seeded_whole_words(scorer):
    one = token_vocabulary(scorer.tokenizer, 20, np.random.default_rng(1))
    assert one == token_vocabulary(scorer.tokenizer, 20, np.random.default_rng(1))
    assert len(one) == 20 and all(w.isalpha() and len(w) >= 3 for w in one)


def test_holdout_split_is_seeded_and_disjoint():
    tr, va = holdout_split(10, 0.2, np.random.default_rng(0))
    assert len(va) == 2 and not set(tr) & set(va) and len(tr) + len(va) == 10
    assert (tr == holdout_split(10, 0.2, np.random.default_rng(0))[0]).all()


def test_search_suffix_never_lowers_the_train_score(ctx):
    preds, truths = ["Make it short.", "Pirate it."], ["Shorten this text.", "Make it sound like a pirate."]
    got = search_suffix(preds, truths, ctx, SearchConfig(steps=2, vocab_size=8, seed=0), progress=False)
    assert got.history == sorted(got.history)
    with pytest.raises(RecoverlibError, match="predictions"):
        search_suffix(preds, truths[:1], ctx, progress=False)


def test_optimize_prompt_cli(tmp_path, capsys, cli_scorer):
    pd.DataFrame({"id": range(len(PROMPTS)), "rewrite_prompt": PROMPTS}).to_csv(
        tmp_path / "t.csv", index=False
    )
    out = tmp_path / "mean.txt"
    args = ["optimize-prompt", "--train", str(tmp_path / "t.csv"), "--embedder", "minilm", "--steps", "3",
            "--vocab-size", "10", "--seed", "1", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "train score" in printed and "validation score" in printed and out.read_text().strip()
    assert main([*args, "--validation", str(tmp_path / "t.csv")]) == 0
    assert f"({len(PROMPTS)} prompts), validation" in capsys.readouterr().out


def test_search_suffix_cli(tmp_path, capsys, cli_scorer):
    make_split(tmp_path / "s.jsonl", tmp_path / "t.csv", rows=6, per_adapter=1, seed=0)
    assert (
        main(
            [
                "search-suffix",
                "--samples-file",
                str(tmp_path / "s.jsonl"),
                "--truth",
                str(tmp_path / "t.csv"),
                "--embedder",
                "minilm",
                "--steps",
                "1",
                "--vocab-size",
                "5",
                "--rows",
                "4",
                "--out",
                str(tmp_path / "suffix.txt"),
            ]
        )
        == 0
    )
    assert "train (4 rows)" in capsys.readouterr().out and (tmp_path / "suffix.txt").read_text().strip()


def test_bad_search_values_are_one_line(tmp_path, capsys):
    pd.DataFrame({"id": [1], "rewrite_prompt": ["x"]}).to_csv(tmp_path / "t.csv", index=False)
    assert main(["optimize-prompt", "--train", str(tmp_path / "t.csv"), "--steps", "0",
                 "--out", str(tmp_path / "m.txt")]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
