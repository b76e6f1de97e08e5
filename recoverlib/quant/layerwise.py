"""Mixtral one piece at a time: a decoder layer (with the split MoE block) or the embeddings/norm/head.

Pieces are built directly on the meta device (no random init, no memory) and filled with ``assign=True``, so
a piece costs exactly its tensors. Nothing here patches transformers: the layer is transformers' own
``MixtralDecoderLayer`` whose ``mlp`` is swapped for recoverlib's split block (``nn.Linear`` router and
experts, :mod:`recoverlib.quant.moe`). Backends quantize and rebuild one linear at a time through
:meth:`~recoverlib.quant.backends.base.QuantBackend.quantize_linear` /
:meth:`~recoverlib.quant.backends.base.QuantBackend.load_linear`; this module walks the pieces.

A backend here is any object with the :class:`~recoverlib.quant.backends.base.QuantBackend` layer-by-layer
hooks.

Piece names: ``outer`` (``model.embed_tokens``, ``model.norm``, ``lm_head``) and ``layer-00003``. Tensor
names are the full in-memory names (``model.layers.3.mlp.experts.0.gate_proj.weight``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import read_config
from recoverlib.module_groups import group_of
from recoverlib.quant.checkpoint import Checkpoint, disk_name, memory_name
from recoverlib.quant.moe import split_block_class
from recoverlib.quant.plan import PrecisionPlan

OUTER = "outer"


def piece_names(layers: int) -> list[str]:
    """Pieces in output order: the outer modules first (as transformers' state dicts list the embeddings)."""
    return [OUTER, *(f"layer-{i:05d}" for i in range(layers))]


def piece_prefix(piece: str) -> str:
    """Name prefix of a piece's modules: ``""`` for the outer modules, ``model.layers.3.`` for
    ``layer-00003``."""
    return "" if piece == OUTER else f"model.layers.{int(piece.split('-')[1])}."


def build_piece(config, piece: str):
    """The piece's module tree on the meta device (dtype set when filled)."""
    import torch
    from torch import nn

    with torch.device("meta"):
        if piece != OUTER:
            from transformers.models.mixtral.modeling_mixtral import MixtralDecoderLayer

            layer = MixtralDecoderLayer(config, int(piece.split("-")[1]))
            layer.mlp = split_block_class()(config)
            return layer
        from transformers.models.mixtral.modeling_mixtral import MixtralRMSNorm

        root, inner = nn.Module(), nn.Module()
        inner.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        inner.norm = MixtralRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        root.model = inner
        if not config.tie_word_embeddings:
            root.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        return root


def source_names(ckpt: Checkpoint, names: list[str]) -> dict[str, str]:
    """In-memory name -> name in a 16-bit checkpoint (Mixtral's published names, or already split names)."""
    out = {}
    for n in names:
        for candidate in (disk_name(n), n):
            if candidate in ckpt.files:
                out[n] = candidate
                break
        else:
            fused = any(".experts.gate_up_proj" in k for k in ckpt.files)
            hint = (
                "; fused experts (mlp.experts.gate_up_proj) are not read, save in Mixtral's published layout"
                if fused
                else ""
            )
            raise RecoverlibError(f"{ckpt.folder}: no tensor {disk_name(n)} (nor {n}){hint}")
    return out


def fill(module, tensors: dict, dtype, loaded: frozenset[str] = frozenset()) -> None:
    """Assign ``{relative name: tensor}`` to the meta module, cast to ``dtype``; every parameter must be given
    except those of the submodules named in ``loaded`` (quantized modules already rebuilt)."""
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    result = module.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if k.rsplit(".", 1)[0] not in loaded]
    if missing or result.unexpected_keys:
        bad = (missing or result.unexpected_keys)[0]
        raise RecoverlibError(
            f"checkpoint tensors do not fit the Mixtral module ({'missing' if missing else 'unexpected'} "
            f"{bad})"
        )


def read_source_piece(ckpt: Checkpoint, config, piece: str, dtype):
    """Build ``piece`` and fill it with its 16-bit tensors from ``ckpt`` (read lazily, this piece only)."""
    module = build_piece(config, piece)
    prefix = piece_prefix(piece)
    rel = list(module.state_dict())
    names = source_names(ckpt, [prefix + r for r in rel])
    tensors = ckpt.read(names.values())
    fill(module, {r: tensors.pop(names[prefix + r]) for r in rel}, dtype)
    return module


def quantize_piece(backend, module, prefix: str, plan: PrecisionPlan, device: str) -> None:
    """Replace each ``nn.Linear`` whose group the plan quantizes, one at a time (its 16-bit weight freed
    after)."""
    from torch import nn

    names = [
        n
        for n, m in module.named_modules()
        if type(m) is nn.Linear and plan.group(group_of(prefix + n)).quantized
    ]
    for n in names:
        linear = module.get_submodule(n)
        module.set_submodule(
            n, backend.quantize_linear(linear, plan.group(group_of(prefix + n)), plan, device)
        )
        del linear


def piece_state(backend, module, prefix: str) -> dict:
    """The tensors a piece writes, full names, on the CPU: quantized linears as their backend stores them."""
    quantized = {n: m for n, m in module.named_modules() if backend.is_quantized(m)}
    state = {}
    for n, m in quantized.items():
        state.update({f"{prefix}{n}.{k}": v.cpu() for k, v in backend.linear_state(m).items()})
    for k, v in module.state_dict().items():
        if not any(k.startswith(n + ".") for n in quantized):
            state[prefix + k] = v.detach().cpu()
    return state


def load_piece(backend, ckpt: Checkpoint, config, piece: str, plan: PrecisionPlan, device: str = "cpu"):
    """Rebuild ``piece`` from a quantized checkpoint written by the streaming quantizer, on ``device``."""
    import torch
    from torch import nn

    module = build_piece(config, piece)
    prefix = piece_prefix(piece)
    dtype = getattr(torch, plan.compute_dtype)
    # memory names whichever layout the checkpoint uses (published block_sparse_moe.experts.N.w1, or split
    # names)
    tensors = {
        memory_name(k)[len(prefix) :]: v for k, v in ckpt.read(_piece_keys(ckpt, prefix, piece)).items()
    }
    loaded = set()
    for n, m in [(n, m) for n, m in module.named_modules() if type(m) is nn.Linear]:
        prec = plan.group(group_of(prefix + n))
        if prec.quantized:
            own = {k[len(n) + 1:]: tensors.pop(k) for k in [k for k in tensors if k.startswith(n + ".")]}
            module.set_submodule(
                n, backend.load_linear(own, (m.out_features, m.in_features), prec, plan, device)
            )
            loaded.add(n)
    fill(module, {k: v.to(device) for k, v in tensors.items()}, dtype, frozenset(loaded))
    return module


def _piece_keys(ckpt: Checkpoint, prefix: str, piece: str) -> list[str]:
    if piece != OUTER:
        return ckpt.names_with_prefix(prefix)
    return [k for k in ckpt.files if not k.startswith("model.layers.")]


def iter_pieces(
    path: Path, config, plan: PrecisionPlan, backend, device: str = "cpu"
) -> Iterator[tuple[str, object]]:
    """``(prefix, module)`` for every piece of a quantized checkpoint, one piece alive at a time if the
    caller drops it."""
    ckpt = Checkpoint.open(path)
    for piece in piece_names(config.num_hidden_layers):
        yield piece_prefix(piece).rstrip("."), load_piece(backend, ckpt, config, piece, plan, device)


def mixtral_config(path_or_dict):
    """A ``MixtralConfig`` from a folder, a config.json or a dict (quantization_config dropped)."""
    from transformers import MixtralConfig

    cfg = dict(read_config(path_or_dict))
    cfg.pop("quantization_config", None)
    return MixtralConfig(
        **{k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version")}
    )


def single_device(device_map: str | dict | None, backend: str) -> str:
    """The one device a layer-by-layer load places every piece on: the CPU for None, the first GPU for
    ``auto``."""
    if isinstance(device_map, dict):
        raise RecoverlibError(
            f"{backend} checkpoints load onto one device here; give a device such as cuda:0, not a map"
        )
    return "cpu" if device_map is None else ("cuda:0" if device_map in ("auto", "cuda") else device_map)


def load_model(path: Path, plan: PrecisionPlan, backend, device: str = "cpu"):
    """A whole quantized model for inference, read piece by piece (shard by shard) onto ``device``.

    The skeleton is transformers' ``MixtralForCausalLM`` with no weights; each decoder layer is replaced by
    its rebuilt piece, so host memory holds one piece beyond what ``device`` keeps.
    """
    import torch
    from accelerate import init_empty_weights
    from transformers import MixtralForCausalLM

    config = mixtral_config(path)
    with init_empty_weights(include_buffers=False):
        model = MixtralForCausalLM._from_config(config, dtype=getattr(torch, plan.compute_dtype))
    for prefix, piece in iter_pieces(path, config, plan, backend, device):
        if prefix:
            model.model.layers[int(prefix.split(".")[-1])] = piece
            continue
        model.model.embed_tokens, model.model.norm = piece.model.embed_tokens, piece.model.norm
        model.lm_head = piece.lm_head if hasattr(piece, "lm_head") else model.model.embed_tokens
    model.model.rotary_emb.to(device)
    return model.eval()
