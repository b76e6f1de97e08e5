"""Which group a module of a causal LM belongs to: the one rule, for every name layout recoverlib meets.

Groups: ``attention``, ``experts`` and ``router`` (a mixture of experts), ``mlp`` (a dense model's
gate/up/down projections), ``lm_head``, ``embeddings`` (everything else, the norms, is ``other``). A model has
either ``experts`` and ``router`` or ``mlp`` (:mod:`recoverlib.architectures`). MoE names come in three
layouts and all follow the same rule: transformers 5 in memory
(``mlp.experts.gate_up_proj`` fused, or ``mlp.experts.3.up_proj`` once split), Mixtral's checkpoints and vLLM
(``block_sparse_moe.experts.3.w1``, ``block_sparse_moe.gate``, ``self_attn.qkv_proj``), and PEFT adapters
(``base_model.model.`` prefixes).
"""

from __future__ import annotations

GROUPS = ("attention", "experts", "mlp", "router", "lm_head", "embeddings")
MOE_BLOCKS = ("mlp", "block_sparse_moe")  # the MoE block's name in memory / on disk and in vLLM
# Name parts that mark MoE expert weights (Mixtral's w1/w2/w3, transformers 5's fused experts, Qwen-style
# MoE).
EXPERT_MARKERS = ("experts", "block_sparse_moe", "w1", "w2", "w3", "gate_up_proj")

# The same rule as regular expressions over full module names, for libraries that take regexes (GPTQModel's
# ``dynamic`` rules; vLLM prefixes such as ``model.layers.0.block_sparse_moe.experts``).
GROUP_REGEX = {
    "attention": r".*\.self_attn\..*",
    "experts": r".*\.experts(\..*)?$",
    "router": r".*\.(" + "|".join(MOE_BLOCKS) + r")\.gate$",
    # a dense MLP (vLLM packs gate and up into gate_up_proj); Mixtral's experts sit one level deeper
    "mlp": r".*\.mlp\.(gate|up|down|gate_up)_proj$",
}


def group_of(name: str) -> str:
    """Module group of a dotted module name: attention, experts, mlp, router, lm_head, embeddings or other."""
    parts = name.split(".")
    if parts[-1] == "lm_head":
        return "lm_head"
    if "embed_tokens" in parts:
        return "embeddings"
    if "experts" in parts:
        return "experts"
    if is_router(name):
        return "router"
    if "self_attn" in parts:
        return "attention"
    if "mlp" in parts:  # after experts and router: Mixtral's in-memory MoE block is called mlp too
        return "mlp"
    return "other"


def is_router(name: str) -> bool:
    """True for an MoE router (``...mlp.gate`` / ``...block_sparse_moe.gate``), not ``gate_proj``."""
    parts = name.split(".")
    return parts[-1] == "gate" and len(parts) > 1 and parts[-2] in MOE_BLOCKS


def names_expert_weights(module_names) -> bool:
    """True if any dotted module name has a part that marks an MoE expert weight."""
    return any(part in EXPERT_MARKERS for name in module_names for part in name.split("."))
