"""The job's FLOPs and bytes against Mixtral-8x7B's published sizes (46.7 B parameters, 12.9 B active per
token, embeddings included) and against hand-countable small cases."""

import pytest

from benchmarks.job_cost import Cost, Job, Shapes, decode_step_cost, experts_touched, prefill_cost, roofline
from recoverlib.architectures import public_config

MIXTRAL = Shapes.from_config(public_config("mixtral-8x7b"))
EMBED = MIXTRAL.hidden * MIXTRAL.vocab


def test_one_token_costs_mixtrals_active_parameters():
    # one prompt of one token: its weight FLOPs plus its logits; 12.9 B active counts the embedding once more
    one = prefill_cost(MIXTRAL, Job((1,), 1, 1))
    active = one.flops / 2 + EMBED
    assert active == pytest.approx(12.9e9, rel=0.01)


def test_a_wide_decode_step_reads_every_weight_once():
    step = decode_step_cost(MIXTRAL, Job((1,) * 512, 1, 2), 1)
    kv = 2 * 2 * 512 * 2 * MIXTRAL.kv_heads * MIXTRAL.head_dim * MIXTRAL.layers
    assert (step.bytes - kv) / 2 + EMBED == pytest.approx(46.7e9, rel=0.01)


def test_experts_touched_grows_to_all():
    assert experts_touched(MIXTRAL, 1) == pytest.approx(2)
    assert experts_touched(MIXTRAL, 2) == pytest.approx(8 * (1 - 0.75**2))
    assert experts_touched(MIXTRAL, 128) == pytest.approx(8, abs=1e-6)


def test_attention_and_lora_are_counted():
    s = Shapes(hidden=8, intermediate=16, layers=1, heads=2, kv_heads=1, head_dim=4, experts=1, top_k=1,
               vocab=10)
    plain, long = prefill_cost(s, Job((1,), 1, 1)), prefill_cost(s, Job((3,), 1, 1))
    # three tokens: three times the weight FLOPs, one logits row, attention over 1 + 2 + 3 positions / 3 each
    per_token = plain.flops - 2 * 8 * 10 - 4 * 1 * 1 * 2 * 4
    assert long.flops == pytest.approx(3 * per_token + 2 * 8 * 10 + 4 * 3 * 2 * 2 * 4)
    lora = prefill_cost(s, Job((1,), 1, 1, lora_rank=2)).flops - plain.flops
    assert lora == 2 * 2 * (8 + 8 + 8 + 4 + 8 + 4 + 8 + 8)


def test_roofline_takes_the_slower_of_compute_and_memory():
    assert Cost(10.0, 100.0).seconds(1.0, 1000.0) == 10.0
    assert Cost(10.0, 100.0).seconds(100.0, 10.0) == 10.0
    job = Job((100,) * 32, 4, 16)
    top = roofline(MIXTRAL, job, 1e12, 1e12, 1e10)
    assert top.total_s == top.prefill_s + top.decode_s
    assert top.decode_s == pytest.approx(top.decode.bytes / 1e10, rel=0.05)  # decode is memory-bound
    assert top.prefill_s == pytest.approx(top.prefill.flops / 1e12)  # prefill is compute-bound
