import json

import pytest

from recoverlib.tiny import TinySpec, adapter_paths, make_tiny


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout(tiny_dir):
    assert (tiny_dir / "model" / "config.json").is_file()
    assert (tiny_dir / "model" / "model.safetensors").is_file()
    assert (tiny_dir / "model" / "tokenizer.json").is_file()
    assert sorted(adapter_paths(tiny_dir)) == ["tiny-a", "tiny-b", "tiny-c"]
    ranks = [
        json.loads((p / "adapter_config.json").read_text())["r"] for p in adapter_paths(tiny_dir).values()
    ]
    assert len(set(ranks)) == 3


def test_config_is_a_vllm_servable_mixtral(tiny_model):
    cfg = json.loads((tiny_model / "config.json").read_text())
    assert cfg["model_type"] == "mixtral" and cfg["dtype"] == "bfloat16"
    assert cfg["head_dim"] in (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vLLM CPU attention sizes
    assert cfg["num_experts_per_tok"] == 2 < cfg["num_local_experts"]


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    spec = TinySpec(num_hidden_layers=1)
    a = _files(make_tiny(tmp_path / "a", adapters=1, seed=3, spec=spec))
    b = _files(make_tiny(tmp_path / "b", adapters=1, seed=3, spec=spec))
    c = _files(make_tiny(tmp_path / "c", adapters=1, seed=4, spec=spec))
    assert a == b
    assert a["model/model.safetensors"] != c["model/model.safetensors"]


def test_tokenizer_has_pad_distinct_from_eos(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert tok.pad_token == "<pad>" and tok.pad_token_id != tok.eos_token_id
    assert (
        tok.decode(tok("Rewrite this text.", add_special_tokens=False)["input_ids"]) == "Rewrite this text."
    )


def test_dense_families_as_transformers_saves_them(tiny_dense):
    """What each dense family brings: its config class, Qwen2's q/k/v biases, Gemma's tied head (no lm_head
    tensor), its own chat template without a system role; every family renders the recovery prompt."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from recoverlib.prompt import RecoveryTemplate

    for family in ("mistral", "llama", "qwen2", "gemma"):
        model = tiny_dense(family) / "model"
        cfg = json.loads((model / "config.json").read_text())
        with safe_open(str(model / "model.safetensors"), "pt") as fh:
            names = set(fh.keys())
        assert cfg["model_type"] == family and cfg["head_dim"] == 64
        assert ("lm_head.weight" in names) == (family != "gemma") == (not cfg["tie_word_embeddings"])
        assert any(n.endswith("q_proj.bias") for n in names) == (family == "qwen2")
        assert not any("experts" in n for n in names)
        tok = AutoTokenizer.from_pretrained(model)
        assert tok.pad_token_id != tok.eos_token_id
        prompt = RecoveryTemplate(kind="chat").render(tok, "The cat sat.", "THE CAT SAT.")
        assert prompt.endswith("into the rewritten text was:") and "The cat sat." in prompt
        adapter = json.loads((tiny_dense(family) / "adapters" / "tiny-a" / "adapter_config.json").read_text())
        assert {"gate_proj", "up_proj", "down_proj", "q_proj"} <= set(adapter["target_modules"])
    gemma = AutoTokenizer.from_pretrained(tiny_dense("gemma") / "model")
    assert "<start_of_turn>model\n" in RecoveryTemplate(kind="chat").render(gemma, "a", "b")
    with pytest.raises(Exception, match="System role not supported"):
        gemma.apply_chat_template([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}],
                                  tokenize=False)
