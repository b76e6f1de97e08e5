"""compressed-tensors W4A16 as llm-compressor 0.14 writes a Mixtral (in its own environment): recognised,
refused by the HF engine in one line (transformers 5.19 would start its experts from random weights),
converted exactly into what vLLM reads, and then served by vLLM itself where the rule says it can."""

from __future__ import annotations

import json

import pytest

from recoverlib.engines.vllm_support import weights_problem
from recoverlib.errors import RecoverlibError
from recoverlib.quant.convert import publish_layout
from recoverlib.quant.formats import ServedWeights, transformers_problem

pytestmark = pytest.mark.slow


def test_recognised_refused_by_hf_and_converted(ct_attention, tmp_path):
    w = ServedWeights.from_folder(ct_attention)
    assert (w.method, w.version, w.group_size, w.sym, dict(w.bits)) == (
        "compressed-tensors", "pack-quantized", 128, True, {"attention": 4})
    assert w.hf_proj_names and "gate_proj" in weights_problem(w)
    from recoverlib.engines.hf import load_causal_lm

    with pytest.raises(RecoverlibError, match="experts started from random weights") as err:
        load_causal_lm(ct_attention, "bfloat16")
    assert "\n" not in str(err.value) and str(err.value) == transformers_problem(w)
    out = publish_layout(ct_attention, tmp_path / "converted")
    converted = ServedWeights.from_folder(out)
    assert not converted.hf_proj_names and weights_problem(converted) is None
    ignore = json.loads((out / "config.json").read_text())["quantization_config"]["ignore"]
    assert any(n.endswith(".experts.0.w1") for n in ignore) and not any("gate_proj" in n for n in ignore)


def test_vllm_serves_the_conversion_where_the_rule_says(ct_attention, tmp_path):
    pytest.importorskip("vllm")
    from recoverlib.engines.vllm_support import probe_vllm_kernels, vllm_problem
    from tests.published.test_gptq_published import _vllm_alone

    out = publish_layout(ct_attention, tmp_path / "converted")
    problem = vllm_problem(ServedWeights.from_folder(out), probe_vllm_kernels())
    assert _vllm_alone(out).startswith("SERVED") == (problem is None), problem
