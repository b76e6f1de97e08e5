"""A deterministic tiny Mixtral, its tokenizer and LoRA adapters, made here without any download.

The shapes follow Mixtral (sparse MoE, top-2 routing, GQA) at a size a 2-core CPU serves in seconds; head_dim
64 is one vLLM's CPU attention supports. Layout written by :func:`make_tiny`::

    OUT/model/               HF model folder (config, bf16 safetensors, fast tokenizer, chat template)
    OUT/adapters/<name>/     PEFT LoRA folders on the attention projections, one rank each

Same seed, same bytes: weights come from a seeded ``torch.Generator``, never the global RNG.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from recoverlib.errors import RecoverlibError
from recoverlib.prompt import INSTRUCTION, RESPONSE_PREFIX
from recoverlib.tiny.corpus import corpus_texts

# Mixtral-Instruct's own turn markers; BOS is added by the template, not by the tokenizer.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "[INST]", "[/INST]")
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class TinySpec:
    """Shapes of the tiny Mixtral. Defaults: 1.3 M parameters, 4 experts top-2, head_dim 64."""

    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    head_dim: int = 64
    num_local_experts: int = 4
    num_experts_per_tok: int = 2
    max_position_embeddings: int = 1024
    rope_theta: float = 1e6
    adapter_ranks: tuple[int, ...] = field(default=(4, 8, 16, 2, 32, 1, 8, 4))


def tokenizer_corpus() -> list[str]:
    """Text the BPE tokenizer is trained on: the recovery template, sample rows and common English."""

    return [INSTRUCTION, RESPONSE_PREFIX, "Original text:", "Rewritten text:", *corpus_texts()]


def train_tokenizer(vocab_size: int, corpus: list[str] | None = None):
    """A byte-level BPE fast tokenizer with ``<pad> <s> </s>`` and a Mixtral-style chat template.

    ``corpus``: the texts to learn merges from (default: :func:`tokenizer_corpus`).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus if corpus is not None else tokenizer_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token=None
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def mixtral_config(spec: TinySpec, tokenizer):
    from transformers import MixtralConfig

    return MixtralConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        num_local_experts=spec.num_local_experts,
        num_experts_per_tok=spec.num_experts_per_tok,
        max_position_embeddings=spec.max_position_embeddings,
        rope_theta=spec.rope_theta,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )


def _init_(module, generator, std: float) -> None:
    """Fill every parameter from ``generator``: normal(0, std), norms at 1."""
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32) * std)


def make_base(out_dir: str | Path, spec: TinySpec | None = None, seed: int = 0):
    """Write the tiny Mixtral with random weights and its tokenizer to ``out_dir``; return the model
    (fp32)."""
    import torch
    from transformers import MixtralForCausalLM

    spec = spec or TinySpec()
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(spec.vocab_size)
    config = mixtral_config(spec, tokenizer)
    model = MixtralForCausalLM(config)
    _init_(model, torch.Generator().manual_seed(seed), std=0.05)
    save_model(model, tokenizer, out_dir)
    return model, tokenizer


def save_model(model, tokenizer, out_dir: str | Path) -> Path:
    """Save an HF model folder in bf16 safetensors with its tokenizer (deterministic bytes)."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)
    model.to(torch.float32)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def make_adapter(model, out_dir: str | Path, rank: int, seed: int, targets=ATTENTION_MODULES) -> Path:
    """Write a PEFT LoRA adapter with non-zero random A and B (so it changes the output)."""
    import torch
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), lora_dropout=0.0)
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / rank**0.5))
    # Empty: PEFT would otherwise look the name up on the Hub while saving (a network call, and a warning
    # offline).
    peft_model.peft_config["default"].base_model_name_or_path = ""
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    peft_model.unload()  # restores the plain base modules for the next adapter
    return Path(out_dir)


def make_tiny(out_dir: str | Path, adapters: int = 2, seed: int = 0, spec: TinySpec | None = None) -> Path:
    """Write the tiny model and ``adapters`` LoRA adapters (``tiny-a``, ``tiny-b``, ...) under ``out_dir``."""
    spec = spec or TinySpec()
    if not 0 <= adapters <= len(spec.adapter_ranks):
        raise RecoverlibError(f"adapters must be between 0 and {len(spec.adapter_ranks)} (got {adapters})")
    out_dir = Path(out_dir)
    model, _ = make_base(out_dir / "model", spec, seed)
    for k in range(adapters):
        name = f"tiny-{chr(ord('a') + k)}"
        make_adapter(model, out_dir / "adapters" / name, spec.adapter_ranks[k], seed=seed * 1000 + k + 1)
    (out_dir / "tiny.json").write_text(
        json.dumps({"seed": seed, "adapters": adapters, **asdict(spec)}, indent=1)
    )
    return out_dir


def adapter_paths(tiny_dir: str | Path) -> dict[str, Path]:
    """``name -> folder`` of the adapters under a :func:`make_tiny` output, sorted by name."""
    root = Path(tiny_dir) / "adapters"
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir()} if root.is_dir() else {}
