"""A causal LM one piece at a time: a decoder layer, or the embeddings/norm/head around the layers.

Pieces are built on the meta device (no random init, no memory; buffers such as Gemma's embedding scale are
real) and filled with ``assign=True``, so a piece costs exactly its tensors. Nothing here patches
transformers: a decoder layer is the model's own class (``MistralDecoderLayer``, ``Qwen2DecoderLayer``, ...,
found on a meta-device skeleton of the model), and a Mixtral layer's ``mlp`` is swapped for recoverlib's split
block (``nn.Linear`` router and experts, :mod:`recoverlib.quant.moe`). The outer piece holds the skeleton's
own ``embed_tokens`` (Gemma's scaled embedding), ``norm`` (Gemma's ``1 + w``) and ``lm_head`` (none when tied
to the embeddings). Backends quantize and rebuild one linear at a time through
:meth:`~recoverlib.quant.backends.base.QuantBackend.quantize_linear` /
:meth:`~recoverlib.quant.backends.base.QuantBackend.load_linear`; this module walks the pieces. Families:
:mod:`recoverlib.architectures`.

A backend here is any object with the :class:`~recoverlib.quant.backends.base.QuantBackend` layer-by-layer
hooks.

Piece names: ``outer`` (``model.embed_tokens``, ``model.norm``, ``lm_head``) and ``layer-00003``. Tensor
names are the full in-memory names (``model.layers.3.mlp.experts.0.gate_proj.weight``,
``model.layers.3.mlp.gate_proj.weight``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

from recoverlib.architectures import MOE, architecture_of
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


def skeleton(config, layers: int | None = None, dtype=None):
    """The model of ``config`` (its ``...ForCausalLM`` class) with every parameter on the meta device and
    real buffers; ``layers`` overrides the number of decoder layers, ``dtype`` the config's."""
    import copy

    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    if layers is not None:
        config = copy.deepcopy(config)
        config.num_hidden_layers = layers  # set after construction: no validation of per-layer lists
    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(config, **({"dtype": dtype} if dtype is not None else {}))


def build_piece(config, piece: str):
    """The piece's module tree on the meta device (dtype set when filled)."""
    from accelerate import init_empty_weights
    from torch import nn

    if piece != OUTER:
        index = int(piece.split("-")[1])
        layer_class = type(skeleton(config, 1).model.layers[0])
        with init_empty_weights(include_buffers=False):
            layer = layer_class(config, index)
            if _architecture(config).kind == MOE:
                layer.mlp = split_block_class()(config)
        return layer
    model = skeleton(config, 0)
    root, inner = nn.Module(), nn.Module()
    inner.embed_tokens, inner.norm = model.model.embed_tokens, model.model.norm
    root.model = inner
    if not _architecture(config).tied:
        root.lm_head = model.lm_head
    return root


def _architecture(config):
    return architecture_of(config.to_dict(), f"config {config.model_type}")


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
            f"checkpoint tensors do not fit the model's modules ({'missing' if missing else 'unexpected'} "
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
        release_heap()


def release_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``), after each quantized linear and each
    piece. Tensors under glibc's mmap threshold (which rises up to 32 MB as large blocks are freed) come from
    the heap, whose freed space the process otherwise keeps: with 7 MB expert matrices the peak RSS grew by
    0.36 GB from 2 to 6 layers with a trim per piece only, and within one layer of 24 such linears by up to
    0.7 GB, at random from run to run (0.79-1.51 GB over three runs of one 2-layer quantize; 0.772 GB in
    each of five with a trim per linear). A no-op where glibc is not the C library."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (looked up once: ``find_library`` runs ``ldconfig``)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


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
    _buffers_to(module, device)
    return module


def _buffers_to(module, device: str) -> None:
    """Move the piece's own buffers (made on the CPU at build: Gemma's embedding scale) to ``device``."""
    import torch

    target = torch.device(device)
    for sub in module.modules():
        for key, buf in list(sub._buffers.items()):  # noqa: SLF001 (nn.Module keeps buffers here)
            if buf is not None and buf.device != target and buf.device.type != "meta":
                sub._buffers[key] = buf.to(target)  # noqa: SLF001


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


def model_config(path_or_dict):
    """The transformers config of a supported family (:mod:`recoverlib.architectures`) from a folder, a
    config.json or a dict (quantization_config dropped)."""
    from transformers import AutoConfig

    cfg = dict(read_config(path_or_dict))
    cfg.pop("quantization_config", None)
    architecture_of(cfg, str(path_or_dict) if not isinstance(path_or_dict, dict) else "model")
    dropped = ("architectures", "transformers_version", "model_type")
    kwargs = {k: v for k, v in cfg.items() if k not in dropped}
    return AutoConfig.for_model(cfg["model_type"], **kwargs)


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

    The skeleton is transformers' own model class with no weights; each decoder layer is replaced by its
    rebuilt piece, so host memory holds one piece beyond what ``device`` keeps. Tied embeddings (Gemma) are
    tied again here: the checkpoint holds no lm_head.
    """
    import torch

    config = model_config(path)
    model = skeleton(config, dtype=getattr(torch, plan.compute_dtype))
    for prefix, piece in iter_pieces(path, config, plan, backend, device):
        if prefix:
            model.model.layers[int(prefix.split(".")[-1])] = piece
            continue
        model.model.embed_tokens, model.model.norm = piece.model.embed_tokens, piece.model.norm
        if hasattr(piece, "lm_head"):
            model.lm_head = piece.lm_head
        else:
            model.lm_head.weight = model.model.embed_tokens.weight
    _buffers_to(model, device)
    return model.eval()
