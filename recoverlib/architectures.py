"""The base-model families recoverlib quantizes, plans and trains, told apart by ``config.json`` alone.

Two kinds: ``moe`` (Mixtral: attention, ``experts``, ``router``) and ``dense`` (Mistral, Llama, Qwen2, Gemma:
attention and an ``mlp`` of gate/up/down projections). Every family is a decoder-only causal LM whose decoder
layers are ``model.layers.N`` with ``model.embed_tokens``, ``model.norm`` and ``lm_head`` (absent when tied to
the embeddings, as in Gemma) around them, two RMSNorms per layer. What differs is written down here: which
linears carry biases (Qwen2's q/k/v always; Llama's and Gemma's when their config says so) and which module
groups the model has. Nothing here imports torch.

Also here: the public configs of the models the planner knows by name (``recoverlib plan mistral-7b``).
"""

from __future__ import annotations

from dataclasses import dataclass

from recoverlib.errors import RecoverlibError

MOE, DENSE = "moe", "dense"
FEED_FORWARD = {MOE: "experts", DENSE: "mlp"}  # the module group of a family's feed-forward weights


@dataclass(frozen=True)
class Family:
    """One model family: its ``model_type``, kind, and where its linears have biases.

    ``qkv_bias``: True (always), False (never) or the config key that switches q/k/v *and* o_proj biases
    (Llama's and Gemma's ``attention_bias``); ``mlp_bias``: False or the config key (Llama's ``mlp_bias``).
    ``defaults``: what transformers' config class assumes for a key a ``config.json`` may leave out, where
    that is not the planner's general rule (tied embeddings off, ``head_dim`` = hidden / heads).
    """

    model_type: str
    kind: str
    qkv_bias: bool | str = False
    mlp_bias: bool | str = False
    defaults: tuple[tuple[str, object], ...] = ()


FAMILIES = {
    f.model_type: f
    for f in (
        Family("mixtral", MOE),
        Family("mistral", DENSE),
        Family("llama", DENSE, qkv_bias="attention_bias", mlp_bias="mlp_bias"),
        Family("qwen2", DENSE, qkv_bias=True),
        # GemmaConfig's own defaults: tie_word_embeddings=True, and head_dim=256 whatever the width
        Family("gemma", DENSE, qkv_bias="attention_bias",
               defaults=(("tie_word_embeddings", True), ("head_dim", 256))),
    )
}


@dataclass(frozen=True)
class Architecture:
    """A model as its config describes it: family, tied embeddings, and which linears carry biases."""

    family: Family
    tied: bool
    qkv_bias: bool  # q/k/v projections
    o_bias: bool  # o_proj (Llama's and Gemma's attention_bias; Qwen2 has none)
    mlp_bias: bool

    @property
    def model_type(self) -> str:
        return self.family.model_type

    @property
    def kind(self) -> str:
        return self.family.kind

    @property
    def feed_forward(self) -> str:
        """``experts`` (MoE) or ``mlp`` (dense): the group a precision plan gives the feed-forward weights."""
        return FEED_FORWARD[self.kind]

    def groups(self) -> tuple[str, ...]:
        """The module groups this model has (of ``recoverlib.module_groups.GROUPS``)."""
        own = ("attention", "experts", "router") if self.kind == MOE else ("attention", "mlp")
        return (*own, *(() if self.tied else ("lm_head",)), "embeddings")

    def describe(self) -> str:
        """``a dense mistral model`` / ``a mixtral mixture of experts``, for messages."""
        if self.kind == MOE:
            return f"a {self.model_type} mixture of experts"
        return f"a dense {self.model_type} model"


def family_of(cfg: dict, what: str = "model") -> Family:
    """The :class:`Family` of a config dict; a family recoverlib does not know is a one-line error."""
    family = FAMILIES.get(cfg.get("model_type"))
    if family is None:
        raise RecoverlibError(
            f"{what}: model_type {cfg.get('model_type')!r}; recoverlib quantizes and plans "
            f"{', '.join(FAMILIES)} (decoder layers at model.layers.N)"
        )
    return family


def completed(cfg: dict, what: str = "model") -> dict:
    """``cfg`` with its family's defaults for the keys it leaves out (see :attr:`Family.defaults`)."""
    return {**dict(family_of(cfg, what).defaults), **cfg}


def architecture_of(cfg: dict, what: str = "model") -> Architecture:
    """The :class:`Architecture` of a config dict; a family recoverlib does not know is a one-line error."""
    family = family_of(cfg, what)
    cfg = completed(cfg, what)

    def flag(setting: bool | str) -> bool:
        return bool(cfg.get(setting, False)) if isinstance(setting, str) else setting

    qkv = flag(family.qkv_bias)
    # Qwen2's q/k/v biases come without an o_proj bias; Llama's and Gemma's attention_bias sets all four
    o_bias = qkv and isinstance(family.qkv_bias, str)
    tied = bool(cfg.get("tie_word_embeddings", False))
    return Architecture(family, tied, qkv, o_bias, flag(family.mlp_bias))


# Public configs, the fields the planners read, from each model's config.json on the Hugging Face Hub:
# mistralai/Mixtral-8x7B-v0.1, mistralai/Mistral-7B-v0.1, google/gemma-7b, meta-llama/Meta-Llama-3-8B and
# Qwen/Qwen2.5-7B. Their parameter counts (46.7 B, 7.24 B, 8.54 B, 8.03 B, 7.62 B) are checked in the tests.
_PUBLIC = {
    "mixtral-8x7b": {
        "model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "num_local_experts": 8,
        "num_experts_per_tok": 2, "vocab_size": 32000, "tie_word_embeddings": False,
    },
    "mistral-7b": {
        "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 32000,
        "tie_word_embeddings": False,
    },
    "gemma-7b": {
        "model_type": "gemma", "hidden_size": 3072, "intermediate_size": 24576, "num_hidden_layers": 28,
        "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 256, "vocab_size": 256000,
        "tie_word_embeddings": True, "attention_bias": False,
    },
    "llama-3-8b": {
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
        "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
    },
    "qwen2.5-7b": {
        "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "head_dim": 128, "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
}
PUBLIC_CONFIGS = tuple(_PUBLIC)


def public_config(name: str) -> dict | None:
    """A copy of the named public config (``mistral-7b``, any case), or None for another name."""
    cfg = _PUBLIC.get(name.lower())
    return dict(cfg) if cfg is not None else None
