"""PEFT LoRA adapters: reading and checking them against a base, their metadata (prime), and what merges
exactly.

Adapters are checked once, before any engine starts, so a bad adapter fails in one line instead of deep inside
vLLM or PEFT. Its layout (transformers 4's per-expert names, transformers 5's fused expert parameters, ...)
is recognised here, once, from its files (:mod:`recoverlib.adapter_layouts`), and every module it changes is
named as Mixtral's checkpoints name it, so engines see one form. One rule (:func:`swap_merge_problem`) decides
whether an adapter's merged weights can be computed from its tensors; both engines use it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from recoverlib.adapter_layouts import (
    LoraPiece,
    converts_parameters,
    layout_of,
    lora_pieces,
    lora_rank,
    module_of,
    served_adapter,
)
from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import read_json_object, read_model_config, require_model_folder
from recoverlib.module_groups import group_of, names_expert_weights

log = logging.getLogger("recoverlib")

# Written by recoverlib's trainer beside a PEFT adapter: {"prime": "Rewrite", "best_epoch": ..., ...}
ADAPTER_META = "recoverlib_adapter.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# adapter_config.json settings under which W + scale * B @ A is not the merged weight of a Linear module
NOT_SWAP_MERGEABLE = ("use_dora", "fan_in_fan_out", "target_parameters", "modules_to_save", "lora_bias")


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter folder holds, read from its config and tensors."""

    name: str
    path: Path
    rank: int
    # module names that carry LoRA weights (e.g. "model.layers.0.self_attn.q_proj")
    target_modules: tuple[str, ...]
    prime: str = ""  # opening every prediction of this adapter starts with (see RecoveryTemplate.render)
    template: str | None = None  # recovery prompt kind it was trained with ("chat", "plain"; None: unknown)
    # recoverlib.adapter_layouts: linear, published, fused or split
    layout: str = "linear"
    # published module name (Mixtral's checkpoint names) -> where its LoRA pair is in the file; empty when the
    # pairs are not known module by module (LoRA on parameters of another model: served through PEFT as is)
    pieces: Mapping[str, LoraPiece] = field(default_factory=dict, compare=False, repr=False)
    # tensors besides LoRA pairs (DoRA magnitudes, LoRA biases, embedding LoRA): not merged from tensors
    others: tuple[str, ...] = ()

    @property
    def modules(self) -> tuple[str, ...]:
        """The modules the adapter changes, named as the base's checkpoint names them."""
        return tuple(sorted(self.pieces)) if self.pieces else self.target_modules

    @property
    def groups(self) -> frozenset[str]:
        """Module groups it changes (:func:`recoverlib.module_groups.group_of`)."""
        return frozenset(group_of(m) for m in self.modules)

    @property
    def targets_experts(self) -> bool:
        return names_expert_weights(self.modules)

    @property
    def touches_moe(self) -> bool:
        """LoRA on the experts or the router: what a running vLLM on CPU cannot take by swapping or LoRA."""
        return self.targets_experts or "router" in self.groups

    def served_path(self, naming: str) -> Path:
        """A PEFT folder of this adapter in ``naming`` (``published``: vLLM's Mixtral; ``split``: a
        split-expert model): the adapter itself where it is already named so, else an exact conversion
        (cached)."""
        if self.layout in ("linear", naming):
            return self.path
        return served_adapter(self.path, self.config, self.pieces, naming)

    @property
    def config(self) -> dict:
        return read_adapter_config(self.name, self.path)


def read_adapter_config(name: str, path: Path) -> dict:
    """``adapter_config.json`` of a PEFT folder; a missing or malformed one is a one-line error."""
    cfg_file = Path(path) / "adapter_config.json"
    if not cfg_file.is_file():
        raise RecoverlibError(
            f"adapter {name!r}: {path} is not a PEFT adapter folder (no adapter_config.json)"
        )
    return read_json_object(cfg_file, f"adapter {name!r}: ")


def read_adapter(name: str, path: str | Path) -> AdapterInfo:
    """Read and check one PEFT LoRA folder; raise a one-line error for a missing or malformed one."""
    path = Path(path)
    if not path.is_dir():
        raise RecoverlibError(f"adapter {name!r}: no such folder {path}")
    cfg = read_adapter_config(name, path)
    if "peft_type" not in cfg:
        log.warning("adapter %r: adapter_config.json names no peft_type; reading it as LoRA", name)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise RecoverlibError(f"adapter {name!r}: peft_type {cfg.get('peft_type')} is not LoRA")
    if "r" not in cfg:
        raise RecoverlibError(f"adapter {name!r}: adapter_config.json has no rank 'r'")
    shapes = _tensor_shapes(name, path)
    modules = tuple(sorted({module_of(k) for k in shapes}))
    _check_targets_hold_weights(name, cfg, modules)
    layout = layout_of(cfg, modules)
    pieces = lora_pieces(name, cfg, shapes) if layout != "linear" or not cfg.get("target_parameters") else {}
    meta = adapter_meta(path)
    return AdapterInfo(
        name=name,
        path=path,
        rank=int(cfg["r"]),
        target_modules=modules,
        prime=meta.get("prime", ""),
        template=meta.get("template"),
        layout=layout,
        pieces=pieces,
        others=tuple(k for k in shapes if not k.endswith(("lora_A.weight", "lora_B.weight"))),
    )


def _check_targets_hold_weights(name: str, cfg: dict, modules: tuple[str, ...]) -> None:
    """The config's ``target_modules`` and the weights agree, as PEFT requires when it loads an adapter.

    A listed target with no LoRA weights would be served as a fresh (zero-B, so silent) LoRA layer; weights
    on a module no target names would be dropped. Regex targets (a string) are checked against the weights
    only.
    """
    targets = cfg.get("target_modules")
    if not targets or targets == "all-linear":
        return
    if isinstance(targets, str):
        import re

        stray = [m for m in modules if not re.fullmatch(targets, m) and not m.endswith(".experts")]
        if stray:
            raise RecoverlibError(
                f"adapter {name!r}: weights for {stray[0]}, which target_modules {targets!r} does not match"
            )
        return
    targets = [str(t) for t in targets]
    matches = lambda m, t: m == t or m.endswith("." + t)  # noqa: E731 (PEFT's rule for a list of names)
    empty = [t for t in targets if not any(matches(m, t) for m in modules)]
    if empty:
        raise RecoverlibError(
            f"adapter {name!r}: adapter_config.json targets {', '.join(sorted(empty))} but its weights hold "
            "no LoRA"
            " for them (a damaged or mislabelled adapter; PEFT refuses it too)"
        )
    params = cfg.get("target_parameters") or []
    stray = [m for m in modules if not any(matches(m, t) for t in targets)
             and not any(m == p.rsplit(".", 1)[0] or m.endswith("." + p.rsplit(".", 1)[0]) for p in params)]
    if stray:
        raise RecoverlibError(f"adapter {name!r}: weights for {stray[0]}, which target_modules does not name")


def adapter_meta(adapter_dir: str | Path) -> dict:
    """What recoverlib's trainer recorded beside an adapter (its prime, recovery prompt kind, history); {} for
    adapters recoverlib did not train."""
    meta = Path(adapter_dir) / ADAPTER_META
    return read_json_object(meta, "adapter metadata ") if meta.is_file() else {}


def adapter_prime(adapter_dir: str | Path) -> str:
    """The prime an adapter was trained with ("" if none or not trained by recoverlib): render and clean with
    it."""
    return adapter_meta(adapter_dir).get("prime", "")


def _tensor_shapes(name: str, path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import SafetensorError, safe_open

    file = path / ADAPTER_WEIGHTS
    if not file.is_file():
        if (path / "adapter_model.bin").is_file():  # a pickle: loading it can run code, so it is never loaded
            raise RecoverlibError(
                f"adapter {name!r}: {path} holds only adapter_model.bin (a pickle; recoverlib loads "
                "safetensors only);"
                " convert it where you trust it: PeftModel.from_pretrained(base, "
                "path).save_pretrained(new_path)"
            )
        raise RecoverlibError(f"adapter {name!r}: {path} has no {ADAPTER_WEIGHTS}")
    try:
        with safe_open(file, framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118 (safe_open has no iter)
    except SafetensorError as err:
        raise RecoverlibError(
            f"adapter {name!r}: {file} is not a whole safetensors file ({err}); copy it again"
        ) from None


def check_adapters(base: str | Path, adapters: Mapping[str, str | Path]) -> list[AdapterInfo]:
    """Read every adapter and check each LoRA pair against the base model's module of that name (the model is
    built on the meta device); an adapter for another model is refused in one line, with the evidence."""
    infos = [read_adapter(n, p) for n, p in adapters.items()]
    if not infos:
        return infos
    modules = BaseModules.read(base)
    for info in infos:
        if info.pieces:
            if info.layout != "linear" and not modules.mixtral:
                example = next(iter(info.target_modules))
                raise RecoverlibError(
                    f"adapter {info.name!r}: its LoRA is on Mixtral's experts ({example}) but the base is a"
                    f" {modules.model_type} model (adapter for another model?)"
                )
            for module, piece in info.pieces.items():
                rank = lora_rank(info.config, piece.source)
                if piece.a_shape[0] != rank:
                    raise RecoverlibError(
                        f"adapter {info.name!r}: lora_A of {module} is {piece.a_shape} but"
                        f" adapter_config.json says r={rank} (damaged, or an adapter for another model?)"
                    )
                modules.check(info.name, module, piece.a_shape, piece.b_shape)
            continue
        for key in _tensor_shapes(info.name, info.path):
            if key.endswith(("lora_A.weight", "lora_B.weight")):
                # LoRA on parameters of a model recoverlib does not convert: names only, PEFT checks shapes
                modules.check(info.name, module_of(key), None, None)
    return infos


@dataclass(frozen=True)
class BaseModules:
    """The base's LoRA-able modules by the names its checkpoint uses: ``(in, out)`` of each ``nn.Linear``
    (``(None, None)``: a module whose shape is not checked here); for a Mixtral also every expert projection
    and router under Mixtral's published names (in memory transformers 5 fuses them)."""

    shapes: Mapping[str, tuple[int | None, int | None]]
    model_type: str
    layers: int
    experts: int

    @property
    def mixtral(self) -> bool:
        return self.model_type == "mixtral"

    @classmethod
    def read(cls, base: str | Path) -> BaseModules:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        require_model_folder(base)
        raw = read_model_config(base)
        config = AutoConfig.from_pretrained(base)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        shapes: dict[str, tuple[int | None, int | None]] = {}
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear):
                shapes[name] = (mod.in_features, mod.out_features)
            elif name:
                shapes.setdefault(name, (None, None))
        model_type = str(raw.get("model_type", "unknown"))
        layers, experts = int(raw.get("num_hidden_layers", 0)), int(raw.get("num_local_experts") or 0)
        if model_type == "mixtral":
            h, i = int(raw["hidden_size"]), int(raw["intermediate_size"])
            for layer in range(layers):
                block = f"model.layers.{layer}.block_sparse_moe"
                shapes[f"{block}.gate"] = (h, experts)
                for e in range(experts):
                    shapes.update({f"{block}.experts.{e}.w1": (h, i), f"{block}.experts.{e}.w3": (h, i),
                                   f"{block}.experts.{e}.w2": (i, h)})
        return cls(shapes, model_type, layers, experts)

    def check(self, adapter: str, module: str, a_shape, b_shape) -> None:
        """Refuse LoRA on ``module`` that the base lacks or whose shapes do not fit it, with the evidence."""
        if module not in self.shapes:
            raise RecoverlibError(f"adapter {adapter!r}: base model has no module {module}"
                                  f" ({self._evidence(module)}; adapter for another model?)")
        in_f, out_f = self.shapes[module]
        if in_f is None or a_shape is None:
            return
        short = module.rsplit(".", 1)[-1]
        if tuple(a_shape)[1:] != (in_f,):
            raise RecoverlibError(f"adapter {adapter!r}: lora_A of {module} is {tuple(a_shape)} but the"
                                  f" base's {short} takes {in_f} inputs (adapter for another model?)")
        if tuple(b_shape)[:1] != (out_f,):
            raise RecoverlibError(f"adapter {adapter!r}: lora_B of {module} is {tuple(b_shape)} but the"
                                  f" base's {short} gives {out_f} outputs (adapter for another model?)")
        if a_shape[0] != b_shape[1]:
            raise RecoverlibError(f"adapter {adapter!r}: lora_A of {module} is {tuple(a_shape)} and its"
                                  f" lora_B {tuple(b_shape)}: their ranks differ (a damaged adapter)")

    def _evidence(self, module: str) -> str:
        parts = module.split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if part == "layers" and nxt.isdigit() and int(nxt) >= self.layers:
                return f"the base has {self.layers} layers"
            if part == "experts" and nxt.isdigit() and int(nxt) >= self.experts:
                return f"the base has {self.experts} experts per layer"
        layer0 = sorted({n.split(".", 3)[3] for n in self.shapes if n.startswith("model.layers.0.")
                         and self.shapes[n][0] is not None and ".experts." not in n})
        return f"the base is a {self.model_type} model whose layers hold {', '.join(layer0)}"


def swap_merge_problem(adapter: AdapterInfo) -> str | None:
    """Why ``adapter``'s merged weights cannot be computed from its tensors and swapped into a running model.

    ``None`` for plain LoRA on ``nn.Linear`` modules, in any of Mixtral's layouts (fused expert parameters
    included): then ``W + scale * B @ A`` per touched module is exact. Any other adapter (DoRA, a LoRA bias,
    LoRA on another model's parameters, ...) can only be served merged as a whole merged model (PEFT's
    ``merge_and_unload``), or unmerged through LoRA layers. Both engines decide by this.
    """
    cfg = adapter.config
    # LoRA on Mixtral's fused expert parameters is exact per-expert LoRA once its pairs are sliced out
    exact = ("target_parameters",) if adapter.layout != "linear" and converts_parameters(cfg) else ()
    unsupported = [k for k in NOT_SWAP_MERGEABLE if cfg.get(k) and k not in exact]
    if unsupported:
        return f"adapter {adapter.name!r}: cannot merge from tensors ({', '.join(unsupported)} set)"
    if adapter.others:
        return f"adapter {adapter.name!r}: cannot merge from tensors (it holds {adapter.others[0]})"
    return None
