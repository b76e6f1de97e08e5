"""Mixtral with one ``nn.Linear`` per expert projection and a ``nn.Linear`` router, for quantizers.

transformers 5 builds Mixtral experts as fused 3-D parameters and the router as ``MixtralTopKRouter``; every
quantizer here replaces only ``nn.Linear``, so without this the experts silently stay 16-bit. Inside
:func:`split_moe` a Mixtral is built with :class:`SplitMoeBlock` (``mlp.gate`` and
``mlp.experts.N.{gate,up,down}_proj`` are ``nn.Linear``) and checkpoints load through defuser's renaming
(``block_sparse_moe.experts.N.w1`` -> ``mlp.experts.N.gate_proj`` ...). The patch is undone on exit, so a
plain load elsewhere in the process still gets the fused model.
"""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from copy import deepcopy

from recoverlib.errors import RecoverlibError
from recoverlib.patches import require_attr
from recoverlib.quant.checkpoint import disk_name


def _defuser_mapping():
    try:
        from defuser.model_registry import MODEL_CONFIG
    except ImportError as err:  # name the missing piece: defuser itself, or one of its own imports
        raise RecoverlibError(f"MoE quantization needs defuser ({err}): pip install defuser") from None
    return MODEL_CONFIG["mixtral"]["checkpoint_mapping"]


def _block_class():
    import torch
    from torch import nn
    from transformers.activations import ACT2FN

    class SplitExpert(nn.Module):
        def __init__(self, config):
            super().__init__()
            h, i = config.hidden_size, config.intermediate_size
            self.gate_proj = nn.Linear(h, i, bias=False)
            self.up_proj = nn.Linear(h, i, bias=False)
            self.down_proj = nn.Linear(i, h, bias=False)
            self.act_fn = ACT2FN[config.hidden_act]

        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    class SplitMoeBlock(nn.Module):
        """Mixtral sparse MoE block, same math as transformers', with ``nn.Linear`` router and experts."""

        def __init__(self, config):
            super().__init__()
            self.top_k = config.num_experts_per_tok
            self.num_experts = config.num_local_experts
            # A plain Linear router (not MixtralTopKRouter) so a quantizer can quantize it on request.
            self.gate = nn.Linear(config.hidden_size, self.num_experts, bias=False)
            self.experts = nn.ModuleList([SplitExpert(config) for _ in range(self.num_experts)])

        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            b, s, h = hidden_states.shape
            x = hidden_states.reshape(-1, h)
            logits = self.gate(x)
            probs = torch.softmax(logits.float(), dim=-1)
            top_w, top_i = torch.topk(probs, self.top_k, dim=-1)
            top_w = (top_w / top_w.sum(dim=-1, keepdim=True)).to(x.dtype)
            out = torch.zeros_like(x)
            for e in top_i.unique().tolist():
                rows, slot = torch.where(top_i == e)
                y = self.experts[e](x[rows]) * top_w[rows, slot, None]
                out.index_add_(0, rows, y.to(x.dtype))
            return out.reshape(b, s, h)

    return SplitMoeBlock


@functools.cache
def split_block_class():
    """The split MoE block class (built once, on first use: torch and transformers are imported then)."""
    return _block_class()


_SPLIT_LOCK = threading.RLock()  # two of our own loads at once must not restore each other's patch


@contextmanager
def split_moe():
    """Within this context, Mixtral models are built and loaded with :class:`SplitMoeBlock`.

    Process-wide for its length (patch ``transformers-split-moe`` in :mod:`recoverlib.patches`): the streaming
    quantize builds its layers directly instead; bitsandbytes loads still need this.
    """
    from transformers import conversion_mapping as cm
    from transformers.models.mixtral import modeling_mixtral as mm

    mapping = _defuser_mapping()
    with _SPLIT_LOCK:
        saved_block = require_attr("transformers-split-moe", mm, "MixtralSparseMoeBlock")
        saved_get = require_attr("transformers-split-moe", cm, "get_checkpoint_conversion_mapping")
        with _patched(mm, cm, mapping, saved_block, saved_get):
            yield


@contextmanager
def _patched(mm, cm, mapping, saved_block, saved_get):
    """The split block and defuser's checkpoint renaming in place of transformers' own, put back on exit."""

    def get_mapping(model_type):
        return deepcopy(mapping) if model_type == "mixtral" else saved_get(model_type)

    mm.MixtralSparseMoeBlock = split_block_class()
    cm.get_checkpoint_conversion_mapping = get_mapping
    try:
        yield
    finally:
        mm.MixtralSparseMoeBlock, cm.get_checkpoint_conversion_mapping = saved_block, saved_get


@contextmanager
def preserved_transformers():
    """Undo on exit any global patch a library (GPTQModel calls defuser) makes to transformers' Mixtral."""
    import transformers.modeling_utils as mu
    from transformers import conversion_mapping as cm
    from transformers.models.mixtral import modeling_mixtral as mm

    saved = (
        mm.MixtralSparseMoeBlock,
        cm.get_checkpoint_conversion_mapping,
        getattr(mu, "get_checkpoint_conversion_mapping", None),
    )
    try:
        yield
    finally:
        mm.MixtralSparseMoeBlock, cm.get_checkpoint_conversion_mapping = saved[0], saved[1]
        if saved[2] is not None:
            mu.get_checkpoint_conversion_mapping = saved[2]


def save_state(model, out_dir, disk_names: bool = True) -> int:
    """Write ``model.state_dict()`` as one safetensors file, names in Mixtral's checkpoint layout; return
    bytes.

    transformers' ``save_pretrained`` re-casts and reshapes bitsandbytes quant states on this path (reload
    then differs), so the state dict is written as is.
    """
    from safetensors.torch import save_file

    state = {}
    for k, v in model.state_dict().items():
        state[disk_name(k) if disk_names else k] = v.detach().contiguous()
    path = f"{out_dir}/model.safetensors"
    save_file(state, path, metadata={"format": "pt"})
    return sum(v.numel() * v.element_size() for v in state.values())
