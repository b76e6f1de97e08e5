"""Random 16-bit checkpoints shaped like a published model, written one tensor at a time.

A Mixtral (no ``model_type``, or ``mixtral``) gets the names of Mixtral-8x7B's own shards
(``model.layers.N.block_sparse_moe.experts.E.w1/w2/w3.weight``, ``block_sparse_moe.gate.weight``); a dense
``model_type`` (mistral, llama, qwen2, gemma) its ``mlp.gate_proj/up_proj/down_proj.weight`` instead, with
the biases and tied head its family has (:mod:`recoverlib.architectures`). Both have
``self_attn.{q,k,v,o}_proj.weight``, the two layer norms, embeddings, final norm and ``lm_head`` (unless
tied), bf16, sharded with ``model.safetensors.index.json``. At most one shard is held in memory (plus the fp32
draw of one tensor), so checkpoints much bigger than the machine's RAM can be written. Each tensor is drawn
from its own seeded generator (seed, tensor index): same arguments, same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

STD = 0.02  # weights ~ N(0, 0.02^2), norms at 1


def tensor_shapes(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, shape)`` of every tensor of a config, in the published checkpoint's names."""
    from recoverlib.architectures import architecture_of

    cfg = {"model_type": "mixtral", **cfg}
    arch = architecture_of(cfg)
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    out = [("model.embed_tokens.weight", (cfg["vocab_size"], h))]
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
        for proj, (rows, cols) in {"q": (q, h), "k": (kv, h), "v": (kv, h), "o": (h, q)}.items():
            out.append((f"{p}self_attn.{proj}_proj.weight", (rows, cols)))
            if arch.o_bias if proj == "o" else arch.qkv_bias:
                out.append((f"{p}self_attn.{proj}_proj.bias", (rows,)))
        if arch.kind == "dense":
            for proj, shape in {"gate": (i, h), "up": (i, h), "down": (h, i)}.items():
                out.append((f"{p}mlp.{proj}_proj.weight", shape))
                if arch.mlp_bias:
                    out.append((f"{p}mlp.{proj}_proj.bias", shape[:1]))
            continue
        out.append((p + "block_sparse_moe.gate.weight", (cfg["num_local_experts"], h)))
        for x in range(cfg["num_local_experts"]):
            m = f"{p}block_sparse_moe.experts.{x}."
            out += [(m + "w1.weight", (i, h)), (m + "w2.weight", (h, i)), (m + "w3.weight", (i, h))]
    out.append(("model.norm.weight", (h,)))
    if not arch.tied:
        out.append(("lm_head.weight", (cfg["vocab_size"], h)))
    return out


def write_checkpoint(folder: Path, cfg: dict, seed: int = 0, shard_bytes: int = 2 * 10**9) -> Path:
    """Write ``config.json`` and bf16 shards for ``cfg`` into ``folder``; returns ``folder``."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from recoverlib.tiny.model import train_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes(cfg)
    plan, shard, used = [], 0, 0
    for _, shape in shapes:
        size = 2 * _numel(shape)
        if used and used + size > shard_bytes:
            shard, used = shard + 1, 0
        plan.append(shard)
        used += size
    n = shard + 1
    files = [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
    pending: dict = {}
    for k, ((name, shape), s) in enumerate(zip(shapes, plan, strict=True)):
        if pending and s != plan[k - 1]:
            save_file(pending, str(folder / files[plan[k - 1]]), metadata={"format": "pt"})
            pending = {}
        gen = torch.Generator().manual_seed(seed * 1_000_003 + k)
        if len(shape) == 1 and name.endswith("norm.weight"):
            pending[name] = torch.ones(shape, dtype=torch.bfloat16)
        elif len(shape) == 1:  # a bias
            pending[name] = (torch.randn(shape, generator=gen) * STD).to(torch.bfloat16)
        else:
            pending[name] = (torch.randn(shape, generator=gen) * STD).to(torch.bfloat16)
    save_file(pending, str(folder / files[plan[-1]]), metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(2 * _numel(s) for _, s in shapes)},
             "weight_map": {name: files[s] for (name, _), s in zip(shapes, plan, strict=True)}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    tokenizer = train_tokenizer(cfg["vocab_size"])  # GPTQ calibrates through it; ids stay below vocab_size
    tokenizer.save_pretrained(folder)
    ids = {k: getattr(tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    cfg = {"model_type": "mixtral", **cfg}
    config = AutoConfig.for_model(**{**ids, **cfg}).to_dict()
    names = {"mixtral": "Mixtral", "mistral": "Mistral", "llama": "Llama", "qwen2": "Qwen2", "gemma": "Gemma"}
    config.update({"architectures": [f"{names[cfg['model_type']]}ForCausalLM"], "dtype": "bfloat16"})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out
