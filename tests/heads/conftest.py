"""Shared by the head tests: a tiny task, an untrained tiny base, stand-in samples, a trained verifier and
a trained embedding head (module-scoped per test file)."""

from __future__ import annotations

import pytest

from recoverlib.combine import CombineContext
from recoverlib.io import read_rows
from recoverlib.synthetic import TaskConfig, generate, write_task
from recoverlib.training.head_data import embedding_examples, verifier_examples
from recoverlib.training.heads import HeadTrainConfig, train_head
from tests.heads.stand_ins import fake_samples


@pytest.fixture(scope="session")
def task(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("task"), TaskConfig(rows=40, eval_rows=12, seed=5))


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    """An untrained tiny Mixtral whose tokenizer was learned on the task's text (short sequences)."""
    from recoverlib.tiny.model import TinySpec, save_model
    from recoverlib.training.pretrain import new_model, task_tokenizer

    rows = generate(TaskConfig(rows=300, eval_rows=1, seed=9))["train"]
    tok = task_tokenizer(
        [t for r in rows for t in (r.original_text, r.rewritten_text, r.rewrite_prompt)], 1024
    )
    return save_model(
        new_model(tok, TinySpec(vocab_size=1024), seed=0), tok, tmp_path_factory.mktemp("b") / "m"
    )


@pytest.fixture(scope="session")
def train_rows(task):
    return read_rows(task / "train.csv", with_truth=True)


@pytest.fixture(scope="session")
def examples(train_rows, scorer):
    return verifier_examples(train_rows, fake_samples(train_rows), CombineContext(scorer=scorer))


@pytest.fixture(scope="session")
def verifier(base, examples, tmp_path_factory):
    out = tmp_path_factory.mktemp("verifier")
    config = HeadTrainConfig(kind="verifier", epochs=3, lr=3e-3, batch_size=16, max_length=160)
    return train_head(base, examples, out, "minilm", config)


@pytest.fixture(scope="session")
def embedding_head(base, train_rows, scorer, tmp_path_factory):
    config = HeadTrainConfig(kind="embedding", epochs=2, lr=3e-3, batch_size=8, max_length=160)
    examples = embedding_examples(train_rows, scorer)
    return train_head(base, examples, tmp_path_factory.mktemp("e"), "minilm", config)
