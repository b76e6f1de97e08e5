"""The ``vllm`` head engine against the ``hf`` reference: vLLM's pooling runner with each head's LoRA per
request returns the same last-token hidden states, so both heads predict the same, the strategies choose the
same, and ``combine --head-engine vllm`` writes the same submission."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recoverlib.combine import CombineContext, VerifierConfig, combine_rows
from recoverlib.combine.configio import save_combination
from recoverlib.heads.cache import loaded
from recoverlib.heads.model import load_head
from tests.heads.stand_ins import fake_samples

pytest.importorskip("vllm", reason="vLLM is not installed")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def contexts(train_rows, scorer):
    pairs = {r.id: (r.original_text, r.rewritten_text) for r in train_rows}
    contexts = {name: CombineContext(scorer=scorer, pairs=pairs, head_engine=name) for name in ("hf", "vllm")}
    yield contexts
    for ctx in contexts.values():
        ctx.close()


def test_vllm_predicts_what_hf_predicts_for_both_heads_on_one_engine(
    contexts, verifier, embedding_head, train_rows
):
    pairs = [(r.original_text, r.rewritten_text) for r in train_rows[:12]]
    cands = [train_rows[(k + 3) % len(train_rows)].rewrite_prompt for k in range(12)]
    got = {}
    for name, ctx in contexts.items():
        v = loaded(ctx, str(verifier.folder), "verifier")
        e = loaded(ctx, str(embedding_head.folder), "embedding")
        assert v.engine is e.engine and v.engine.name == name
        got[name] = (v.predict(pairs, cands), e.predict(pairs))
    (hf_v, hf_e), (vl_v, vl_e) = got["hf"], got["vllm"]
    assert np.allclose(vl_v, hf_v, atol=1e-4) and np.array_equal(np.argsort(vl_v), np.argsort(hf_v))
    assert np.allclose(vl_e, hf_e, atol=1e-4)
    # each request carries its own head's LoRA: the base alone would give other hidden states
    engine = loaded(contexts["vllm"], str(verifier.folder), "verifier").engine
    inputs = [[5, 6, 7, 8, 9, 10]]
    a, b = (engine.last_hidden(n, inputs) for n in sorted(engine.heads))
    assert np.abs(a - b).max() > 1e-3


def test_the_verifier_strategy_chooses_the_same_on_either_engine(contexts, verifier, train_rows):
    rows = train_rows[:8]
    samples = fake_samples(train_rows)
    config = VerifierConfig(path=str(verifier.folder), mode="weight")
    got = {
        name: combine_rows({r.id: samples[r.id] for r in rows}, config, ctx, progress=False)
        for name, ctx in contexts.items()
    }
    assert got["vllm"] == got["hf"]


def test_combine_on_the_vllm_head_engine_writes_hf_s_submission(task, verifier, train_rows, tmp_path):
    from recoverlib.cli import main

    samples = tmp_path / "samples.jsonl"
    lines = [{"id": i, "samples": [{"adapter": s.adapter, "index": s.index, "text": s.text} for s in got]}
             for i, got in fake_samples(train_rows[:6]).items()]
    samples.write_text("".join(json.dumps(x) + "\n" for x in lines))
    comb = tmp_path / "comb.json"
    save_combination(VerifierConfig(path=str(verifier.folder)), comb)
    subs = {}
    for name in ("hf", "vllm"):
        subs[name] = tmp_path / f"{name}.csv"
        argv = ["combine", "--samples-file", str(samples), "--combination", str(comb), "--rows",
                str(task / "train.csv"), "--out", str(subs[name]), "--embedder", "minilm",
                "--head-engine", name]
        assert main(argv) == 0
    assert subs["vllm"].read_text() == subs["hf"].read_text()
    assert len(subs["hf"].read_text().splitlines()) == 7


def test_an_unknown_head_is_refused_before_vllm_starts(verifier, tmp_path):
    from recoverlib.errors import RecoverlibError

    with pytest.raises(RecoverlibError, match="not a head folder"):
        load_head(tmp_path, engine="vllm")


def test_a_running_engine_restarts_only_for_a_head_it_cannot_hold(verifier):
    from recoverlib.adapters import read_adapter
    from recoverlib.heads.vllm_engine import holds

    info = read_adapter("v", verifier.folder)  # rank 8 on q/k/v/o
    attention = {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert holds(8, attention, 320, info, 160)
    assert not holds(8, attention, 128, info, 160)  # a longer context
    assert not holds(1, attention, 320, info, 160)  # a larger rank
    assert not holds(8, {"q_proj", "v_proj"}, 320, info, 160)  # modules the engine has no LoRA slots on
