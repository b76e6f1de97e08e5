"""A deterministic tiny Mixtral (or a tiny dense Mistral, Llama, Qwen2 or Gemma), its tokenizer and LoRA
adapters, made here without any download.

The shapes follow Mixtral (sparse MoE, top-2 routing, GQA) at a size a 2-core CPU serves in seconds; head_dim
64 is one vLLM's CPU attention supports. ``family`` picks a dense base of the same widths instead
(:mod:`recoverlib.tiny.dense`: each family's own config class, biases, tied embeddings and chat markup).
Layout written by :func:`make_tiny`::

    OUT/model/               HF model folder (config, bf16 safetensors, fast tokenizer, chat template)
    OUT/adapters/<name>/     PEFT LoRA folders on the attention projections (and a dense MLP), one rank each

Same seed, same bytes: weights come from a seeded ``torch.Generator``, never the global RNG.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from recoverlib.errors import RecoverlibError
from recoverlib.prompt import INSTRUCTION, RESPONSE_PREFIX
from recoverlib.tiny.chat import FAMILY_CHATS, MIXTRAL_CHAT, ChatFormat
from recoverlib.tiny.corpus import corpus_texts
from recoverlib.tiny.dense import DENSE_FAMILIES, MLP_MODULES, dense_config

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
TINY_FAMILIES = ("mixtral", *DENSE_FAMILIES)


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


def train_tokenizer(vocab_size: int, corpus: list[str] | None = None, chat: ChatFormat = MIXTRAL_CHAT):
    """A byte-level BPE fast tokenizer with ``chat``'s special tokens and chat template (default: ``<pad> <s>
    </s>`` and a Mixtral-style template).

    ``corpus``: the texts to learn merges from (default: :func:`tokenizer_corpus`).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(chat.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus if corpus is not None else tokenizer_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=chat.bos, eos_token=chat.eos, pad_token=chat.pad, unk_token=None
    )
    tok.chat_template = chat.template
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


def _init_(module, generator, std: float, norm: float = 1.0) -> None:
    """Fill every parameter from ``generator``: normal(0, std), norms at ``norm`` (1: the identity of an
    RMSNorm's ``w``; Gemma's ``1 + w`` wants 0)."""
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.fill_(norm)
            else:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32) * std)


def make_base(out_dir: str | Path, spec: TinySpec | None = None, seed: int = 0, family: str = "mixtral"):
    """Write the tiny model of ``family`` (``mixtral`` or a dense family of :mod:`recoverlib.tiny.dense`)
    with random weights and its tokenizer to ``out_dir``; return the model (fp32) and tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    spec = spec or TinySpec()
    out_dir = Path(out_dir)
    if family == "mixtral":
        tokenizer = train_tokenizer(spec.vocab_size)
        config = mixtral_config(spec, tokenizer)
    else:
        tokenizer = train_tokenizer(spec.vocab_size, chat=FAMILY_CHATS[family])
        config = dense_config(family, spec, tokenizer)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _init_(model, torch.Generator().manual_seed(seed), std=0.05, norm=0.0 if family == "gemma" else 1.0)
    model.tie_weights()  # Gemma: lm_head is the embedding, after both were drawn
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


def make_tiny(out_dir: str | Path, adapters: int = 2, seed: int = 0, spec: TinySpec | None = None,
              family: str = "mixtral") -> Path:
    """Write the tiny model of ``family`` and ``adapters`` LoRA adapters (``tiny-a``, ``tiny-b``, ...) under
    ``out_dir``. Families: ``mixtral`` (the default) and the dense ``mistral``, ``llama``, ``qwen2``,
    ``gemma``, whose adapters also put LoRA on the MLP."""
    spec = spec or TinySpec()
    if family not in TINY_FAMILIES:
        raise RecoverlibError(f"tiny family {family!r}: choose one of {', '.join(TINY_FAMILIES)}")
    if not 0 <= adapters <= len(spec.adapter_ranks):
        raise RecoverlibError(f"adapters must be between 0 and {len(spec.adapter_ranks)} (got {adapters})")
    out_dir = Path(out_dir)
    model, _ = make_base(out_dir / "model", spec, seed, family)
    targets = ATTENTION_MODULES if family == "mixtral" else ATTENTION_MODULES + MLP_MODULES
    for k in range(adapters):
        name = f"tiny-{chr(ord('a') + k)}"
        make_adapter(model, out_dir / "adapters" / name, spec.adapter_ranks[k], seed=seed * 1000 + k + 1,
                     targets=targets)
    (out_dir / "tiny.json").write_text(
        json.dumps({"seed": seed, "adapters": adapters, "family": family, **asdict(spec)}, indent=1)
    )
    return out_dir


def adapter_paths(tiny_dir: str | Path) -> dict[str, Path]:
    """``name -> folder`` of the adapters under a :func:`make_tiny` output, sorted by name."""
    root = Path(tiny_dir) / "adapters"
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir()} if root.is_dir() else {}
