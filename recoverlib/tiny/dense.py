"""Tiny dense bases: Mistral, Llama, Qwen2 and Gemma at the tiny Mixtral's widths, each family's own config.

What each family brings that a Mixtral does not, so the tests meet it: Qwen2's q/k/v biases (its config class
adds them), Gemma's tied embeddings (no ``lm_head`` tensor), its embedding scaled by sqrt(hidden), its
RMSNorm ``(1 + w)``, its GeLU MLP and its chat template without a system role (:mod:`recoverlib.tiny.chat`).
Llama gets its config's ``attention_bias`` and ``mlp_bias`` off, as Llama 3 ships. Written by transformers'
``save_pretrained`` through :func:`recoverlib.tiny.model.make_tiny` (``family=...``).
"""

from __future__ import annotations

DENSE_FAMILIES = ("mistral", "llama", "qwen2", "gemma")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
# What a family's config sets beyond the shared widths (values as its published 7-8 B model's config).
_EXTRA = {
    "mistral": {"sliding_window": None},
    "llama": {"attention_bias": False, "mlp_bias": False},
    "qwen2": {"use_sliding_window": False},
    "gemma": {"tie_word_embeddings": True, "hidden_activation": "gelu_pytorch_tanh", "attention_bias": False},
}


def dense_config(family: str, spec, tokenizer):
    """The transformers config of a tiny dense ``family`` model with ``spec``'s widths (a
    :class:`~recoverlib.tiny.model.TinySpec`; its expert fields unused) and ``tokenizer``'s special ids."""
    from transformers import AutoConfig

    settings = dict(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        rope_theta=spec.rope_theta,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    return AutoConfig.for_model(family, **{**settings, **_EXTRA[family]})
