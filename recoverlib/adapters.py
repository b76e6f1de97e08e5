"""PEFT LoRA adapters: reading and checking them against a base, their metadata (prime), and what merges
exactly.

Adapters are checked once, before any engine starts, so a bad adapter fails in one line instead of deep inside
vLLM or PEFT. One rule (:func:`swap_merge_problem`) decides whether an adapter's merged weights can be
computed from its tensors and swapped into a running model; both engines use it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from recoverlib.errors import RecoverlibError
from recoverlib.model_folder import read_json_object, require_model_folder
from recoverlib.module_groups import names_expert_weights

log = logging.getLogger("recoverlib")

# Written by recoverlib's trainer beside a PEFT adapter: {"prime": "Rewrite", "best_epoch": ..., ...}
ADAPTER_META = "recoverlib_adapter.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# adapter_config.json settings under which W + scale * B @ A is not the merged weight of a Linear module
NOT_SWAP_MERGEABLE = ("use_dora", "fan_in_fan_out", "target_parameters", "modules_to_save")


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

    @property
    def targets_experts(self) -> bool:
        return names_expert_weights(self.target_modules)

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
    modules = tuple(sorted({_module_of(k) for k in _tensor_shapes(name, path)}))
    _check_targets_hold_weights(name, cfg, modules)
    meta = adapter_meta(path)
    return AdapterInfo(
        name=name,
        path=path,
        rank=int(cfg["r"]),
        target_modules=modules,
        prime=meta.get("prime", ""),
        template=meta.get("template"),
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


def _module_of(key: str) -> str:
    """``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` ->
    ``model.layers.0.self_attn.q_proj``."""
    key = key.removeprefix("base_model.model.")
    # PEFT nests one ParamWrapper per target parameter: "mlp.experts.base_layer.lora_A" is "mlp.experts" too
    return key.split(".lora_", 1)[0].replace(".base_layer", "")


def check_adapters(base: str | Path, adapters: Mapping[str, str | Path]) -> list[AdapterInfo]:
    """Read every adapter and check its LoRA shapes against the base model's modules (built on the meta
    device)."""
    infos = [read_adapter(n, p) for n, p in adapters.items()]
    if not infos:
        return infos
    modules = _base_linear_shapes(base)
    for info in infos:
        for key, shape in _tensor_shapes(info.name, info.path).items():
            mod = _module_of(key)
            if mod not in modules:
                if ".lora_" in key and not key.endswith(("lora_A.weight", "lora_B.weight")):
                    continue
                raise RecoverlibError(
                    f"adapter {info.name!r}: base model has no module {mod} (adapter for another model?)"
                )
            in_f, out_f = modules[mod]
            want = (info.rank, in_f) if ".lora_A." in key else (out_f, info.rank)
            if modules[mod] != (None, None) and tuple(shape) != want:
                raise RecoverlibError(
                    f"adapter {info.name!r}: {key} has shape {tuple(shape)} but the base needs {want} "
                    "(adapter for another model?)"
                )
    return infos


def _base_linear_shapes(base: str | Path) -> dict[str, tuple[int | None, int | None]]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    require_model_folder(base)
    config = AutoConfig.from_pretrained(base)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes: dict[str, tuple[int | None, int | None]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            shapes[name] = (mod.in_features, mod.out_features)
        elif name:
            # LoRA on parameters (fused experts): shape not checked here
            shapes.setdefault(name, (None, None))
    return shapes


def swap_merge_problem(adapter: AdapterInfo) -> str | None:
    """Why ``adapter``'s merged weights cannot be computed from its tensors and swapped into a running model.

    ``None`` for plain LoRA on ``nn.Linear`` modules: then ``W + scale * B @ A`` per touched module is exact.
    Any other adapter (LoRA on parameters such as fused experts, DoRA, ...) can only be served merged as a
    whole merged model (PEFT's ``merge_and_unload``), or unmerged through LoRA layers. Both engines decide by
    this.
    """
    cfg = adapter.config
    unsupported = [k for k in NOT_SWAP_MERGEABLE if cfg.get(k)]
    if unsupported:
        return f"adapter {adapter.name!r}: cannot merge from tensors ({', '.join(unsupported)} set)"
    return None
