"""The layouts PEFT has written LoRA adapters for Mixtral in, recognised from an adapter's files, and the same
LoRA rewritten (exactly) in the layout an engine serves.

Four layouts (named as :func:`recoverlib.quant.checkpoint.expert_layout` names checkpoints):

- ``linear``: LoRA on modules every layout names alike (attention, ``lm_head``); attention-only adapters.
- ``published``: transformers 4 and Mixtral's own checkpoints: ``block_sparse_moe.experts.E.w1/w2/w3`` and the
  router ``block_sparse_moe.gate`` (the Hub's Mixtral adapters, QLoRA runs of the competition's time). vLLM's
  Mixtral reads these names.
- ``fused``: transformers 5 fused the experts into 3-D parameters, and PEFT puts LoRA on them with
  ``target_parameters`` (``mlp.experts.gate_up_proj`` / ``down_proj``, the router ``mlp.gate.weight``): one
  A of ``(r * E, in)`` and one B of ``(out, r * E)`` per parameter, expert ``e`` owning rows ``e*r:(e+1)*r``
  of A and columns ``e, E + e, ...`` of B (PEFT's ``ParamWrapper.get_delta_weight``); gate and up share A.
- ``split``: one ``nn.Linear`` per expert under transformers 5's names (``mlp.experts.E.gate_proj/up_proj/
  down_proj``, router ``mlp.gate``): defuser, GPTQModel and recoverlib's split block.

In every layout each (layer, expert, projection) gets ``W + scale * B @ A`` with a rank-r pair, so one
adapter moves between layouts by renaming and, from ``fused``, slicing: no arithmetic, nothing lost.
:func:`lora_pieces` finds every pair from the file's header under Mixtral's published module names (the
names the checkpoints on disk use, so a merge streams over them); :func:`read_pairs` reads them;
:func:`served_adapter` writes a PEFT folder in the ``published`` names (vLLM's fused-MoE LoRA on a GPU) or the
``split`` names (PEFT on a split-expert model), cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from recoverlib.cache import cache_dir, fingerprint
from recoverlib.errors import RecoverlibError
from recoverlib.quant.checkpoint import disk_name, memory_name

LAYOUTS = ("linear", "published", "fused", "split")
LAYOUT_HELP = {
    "linear": "LoRA on modules every layout names alike (attention, lm_head)",
    "published": "per-expert names of transformers 4 and Mixtral's checkpoints (block_sparse_moe.experts.E.w1"
                 ")",
    "fused": "transformers 5's LoRA on fused expert parameters (target_parameters mlp.experts.gate_up_proj)",
    "split": "per-expert nn.Linear names of a split-expert model (mlp.experts.E.gate_proj)",
}
SERVED_FORMAT = 1  # bump when a converted folder's meaning changes
FUSED_PARAMS = ("gate_up_proj", "down_proj")
CONVERTED_PARAMETERS = ("experts.gate_up_proj", "experts.down_proj", "gate.weight")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraPiece:
    """Where one module's LoRA pair sits in an adapter file.

    ``expert``/``experts``: the slice of a fused stack (None/1 for a plain pair); ``rows``: the part of B's
    rows that belongs to this projection (gate or up half of ``gate_up_proj``); shapes are the pair's own,
    ``(r, in)`` and ``(out, r)``; ``source`` is the module name in the file (rank/alpha patterns name it).
    """

    source: str
    a_key: str
    b_key: str
    a_shape: tuple[int, int]
    b_shape: tuple[int, int]
    expert: int | None = None
    experts: int = 1
    rows: tuple[int, int] | None = None


def module_of(key: str) -> str:
    """``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` ->
    ``model.layers.0.self_attn.q_proj``.

    PEFT nests one ParamWrapper per target parameter: ``mlp.experts.base_layer.lora_A`` is ``mlp.experts``
    too.
    """
    key = key.removeprefix(PEFT_PREFIX)
    return key.split(".lora_", 1)[0].replace(".base_layer", "")


def layout_of(cfg: Mapping, modules) -> str:
    """The layout of an adapter with LoRA on ``modules`` (file names, see :func:`module_of`)."""
    parts = [m.split(".") for m in modules]
    if any("block_sparse_moe" in p for p in parts):
        return "published"
    if any(p[-1] == "experts" for p in parts):
        return "fused"
    if any("experts" in p for p in parts):
        return "split"
    if any(_is_split_router(m) for m in modules):  # the router alone: a module (split) or a parameter
        return "fused" if cfg.get("target_parameters") else "split"
    return "linear"


def converts_parameters(cfg: Mapping) -> bool:
    """Whether every ``target_parameters`` entry is one this module converts exactly (Mixtral's fused experts
    and its router's weight; PEFT 0.21 itself turns a ``gate`` target into ``gate.weight``)."""
    return all(p.endswith(CONVERTED_PARAMETERS) for p in cfg.get("target_parameters") or [])


def _is_split_router(module: str) -> bool:
    parts = module.split(".")
    return len(parts) > 1 and parts[-1] == "gate" and parts[-2] == "mlp"


def lora_pieces(name: str, cfg: Mapping, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, LoraPiece]:
    """Every LoRA pair of an adapter (tensor shapes from its file's header), keyed by the published name of
    the module it changes (``model.layers.0.block_sparse_moe.experts.3.w1``); nothing is read but the
    header."""
    by_module: dict[str, dict[str, str]] = {}
    for key in shapes:
        if key.endswith(("lora_A.weight", "lora_B.weight")):
            kind = "A" if ".lora_A." in key else "B"
            by_module.setdefault(key.split(".lora_", 1)[0], {})[kind] = key
    layout = layout_of(cfg, [module_of(k) for k in shapes])
    pieces: dict[str, LoraPiece] = {}
    stacks: dict[str, list[dict[str, str]]] = {}
    for prefix, pair in sorted(by_module.items()):
        if set(pair) != {"A", "B"}:
            lone = next(iter(pair))
            raise RecoverlibError(f"adapter {name!r}: {prefix} has lora_{lone} without its pair")
        module = module_of(prefix)
        if layout == "fused" and module.split(".")[-1] == "experts":
            stacks.setdefault(module, []).append(pair)
            continue
        a, b = tuple(shapes[pair["A"]]), tuple(shapes[pair["B"]])
        published = disk_name(module) if layout in ("split", "fused") else module
        pieces[published] = LoraPiece(module, pair["A"], pair["B"], a, b)
    for module, pairs in stacks.items():
        pieces.update(_fused_pieces(name, cfg, module, pairs, shapes))
    return pieces


def _fused_pieces(name: str, cfg: Mapping, module: str, pairs: list[dict[str, str]],
                  shapes: Mapping[str, tuple[int, ...]]) -> dict[str, LoraPiece]:
    """The per-expert pairs inside ``module``'s fused LoRA (one or two nested ParamWrappers)."""
    params = [p.rsplit(".", 1)[-1] for p in cfg.get("target_parameters") or [] if p.rsplit(".", 1)[-1]
              in FUSED_PARAMS]
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise RecoverlibError(f"adapter {name!r}: rank_pattern/alpha_pattern on fused expert parameters are"
                              " not converted; serve it with --engine hf --lora-mode dynamic")
    owner = _assign_fused(name, module, params, pairs, shapes)
    rank = int(cfg["r"])
    out = {}
    block = disk_name(module)  # model.layers.L.block_sparse_moe.experts
    for param, pair in owner.items():
        (ra, inp), (outp, rb) = shapes[pair["A"]], shapes[pair["B"]]
        if ra != rb or ra % rank:
            raise RecoverlibError(f"adapter {name!r}: {module} {param} LoRA shapes {(ra, inp)} / {(outp, rb)}"
                                  f" are not r={rank} per expert")
        experts = ra // rank
        halves = {"w1": (0, outp // 2), "w3": (outp // 2, outp)} if param == "gate_up_proj" else {"w2": None}
        for e in range(experts):
            for proj, rows in halves.items():
                b_rows = (rows[1] - rows[0]) if rows else outp
                out[f"{block}.{e}.{proj}"] = LoraPiece(module, pair["A"], pair["B"], (rank, inp),
                                                       (b_rows, rank), expert=e, experts=experts, rows=rows)
    return out


def _assign_fused(name: str, module: str, params: list[str], pairs: list[dict[str, str]],
                  shapes: Mapping[str, tuple[int, ...]]) -> dict[str, dict[str, str]]:
    """Which nested ParamWrapper holds which parameter. One: the config's only expert parameter. Two: by
    shape (gate_up's B has twice as many rows as down's A has inputs), not by PEFT's nesting order."""
    if len(pairs) == 1 and len(params) == 1:
        return {params[0]: pairs[0]}
    if len(pairs) == 2 and sorted(params) == sorted(FUSED_PARAMS):
        for gate_up, down in (pairs, pairs[::-1]):
            if shapes[gate_up["B"]][0] == 2 * shapes[down["A"]][1] and \
                    shapes[gate_up["A"]][1] == shapes[down["B"]][0]:
                return {"gate_up_proj": gate_up, "down_proj": down}
    raise RecoverlibError(f"adapter {name!r}: cannot tell which LoRA of {module} belongs to which of its"
                          f" target_parameters {params} (shapes do not fit Mixtral's experts)")


def read_pairs(path: Path, pieces: Mapping[str, LoraPiece]) -> dict:
    """``{published module: (A, B)}`` as stored (no dtype change), sliced out of fused stacks."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(Path(path) / ADAPTER_WEIGHTS), framework="pt") as fh:
        cache: dict[str, object] = {}

        def get(key):
            if key not in cache:
                cache[key] = fh.get_tensor(key)
            return cache[key]

        for module, piece in pieces.items():
            a, b = get(piece.a_key), get(piece.b_key)
            if piece.expert is not None:
                e, n = piece.expert, piece.experts
                a = a.reshape(n, -1, a.shape[-1])[e]  # (r, in)
                b = b.reshape(b.shape[0], -1, n)[:, :, e]  # (out, r)
                if piece.rows is not None:
                    b = b[piece.rows[0]:piece.rows[1]]
                a, b = a.clone(), b.clone()  # own storage: gate and up share A, experts share the stack
            out[module] = (a.contiguous(), b.contiguous())
    return out


def lora_scale(cfg: Mapping, module: str) -> float:
    """PEFT's scale for ``module`` (its name in the adapter file): ``lora_alpha / r``, or ``/ sqrt(r)`` with
    rsLoRA, with ``rank_pattern`` / ``alpha_pattern`` applied."""
    short = module.split(".")
    rank = next((v for k, v in (cfg.get("rank_pattern") or {}).items() if k in short or module.endswith(k)),
                cfg["r"])
    alpha = next((v for k, v in (cfg.get("alpha_pattern") or {}).items() if k in short or module.endswith(k)),
                 cfg["lora_alpha"])
    return alpha / (rank**0.5 if cfg.get("use_rslora") else rank)


def served_name(published: str, naming: str) -> str:
    """A published module name in the ``naming`` an engine loads (``published`` or ``split``)."""
    return memory_name(published) if naming == "split" else published


def served_adapter(path: Path, cfg: Mapping, pieces: Mapping[str, LoraPiece], naming: str,
                   root: Path | None = None) -> Path:
    """A PEFT folder holding the same LoRA in ``naming`` (``published``: vLLM's Mixtral; ``split``: PEFT on a
    split-expert model), written once per adapter content under ``<cache>/adapters`` (or ``root``)."""
    if naming not in ("published", "split"):
        raise ValueError(f"naming {naming!r}")
    content = f"{SERVED_FORMAT}|{naming}|{fingerprint(Path(path), full=True)}"
    key = hashlib.sha256(content.encode()).hexdigest()
    folder = (Path(root) if root else cache_dir("adapters")) / key[:32]
    if (folder / "adapter_config.json").is_file():
        return folder
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_adapter(path, cfg, pieces, naming, tmp)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process wrote it first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def write_adapter(path: Path, cfg: Mapping, pieces: Mapping[str, LoraPiece], naming: str, out: Path) -> Path:
    """Write the adapter at ``path`` in ``naming`` into ``out``: the same pairs, renamed (and sliced out of
    fused stacks), ``target_modules`` listing every module by its full name, no ``target_parameters``."""
    from safetensors.torch import save_file

    pairs = read_pairs(path, pieces)
    tensors, rank_pattern, alpha_pattern = {}, {}, {}
    for module, (a, b) in pairs.items():
        served = served_name(module, naming)
        tensors[f"{PEFT_PREFIX}{served}.lora_A.weight"] = a
        tensors[f"{PEFT_PREFIX}{served}.lora_B.weight"] = b
        # patterns name modules in the source layout; written out per module, by full name, where they differ
        source = pieces[module].source
        rank = _pattern_value(cfg, "rank_pattern", source)
        alpha = _pattern_value(cfg, "alpha_pattern", source)
        if rank is not None:
            rank_pattern[served] = rank
        if alpha is not None:
            alpha_pattern[served] = alpha
    new_cfg = {**cfg, "target_modules": sorted(served_name(m, naming) for m in pairs),
               "target_parameters": None, "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
               "layers_to_transform": None, "layers_pattern": None, "exclude_modules": None}
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(new_cfg, indent=1, sort_keys=True) + "\n")
    for extra in Path(path).iterdir():  # recoverlib's metadata (prime), README: kept beside the weights
        if extra.is_file() and extra.name not in (ADAPTER_WEIGHTS, "adapter_config.json"):
            shutil.copy2(extra, out / extra.name)
    origin = {"source": str(Path(path).resolve()), "naming": naming}
    (out / "converted_from.json").write_text(json.dumps(origin))
    return out


def lora_rank(cfg: Mapping, module: str) -> int:
    """The rank adapter_config.json gives ``module`` (its name in the adapter file): ``rank_pattern``, else
    ``r``."""
    rank = _pattern_value(cfg, "rank_pattern", module)
    return int(cfg["r"] if rank is None else rank)


def _pattern_value(cfg: Mapping, field: str, module: str):
    short = module.split(".")
    return next((v for k, v in (cfg.get(field) or {}).items() if k in short or module.endswith(k)), None)
