"""How each engine will serve an adapter, said before any engine starts (``recoverlib inspect ADAPTER``).

Read from the same rules the engines act on (:func:`recoverlib.adapters.swap_merge_problem`, the vLLM plan's
:func:`~recoverlib.engines.vllm_setup.dynamic_problem` and :func:`~recoverlib.engines.vllm_setup.
needs_fresh_engine`, :func:`~recoverlib.engines.lora_mode.merge_blocker`), so what ``inspect`` says is what
``predict`` does: for each engine and place, the LoRA route (``dynamic``), the merged route (``merged``), and
which one ``--lora-mode auto`` takes when the choice does not depend on the workload.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from recoverlib.adapter_layouts import LAYOUT_HELP, served_name
from recoverlib.adapters import AdapterInfo, check_adapters, read_adapter, swap_merge_problem
from recoverlib.engines.device import Device
from recoverlib.engines.lora_mode import merge_blocker
from recoverlib.engines.vllm_setup import dynamic_problem, needs_fresh_engine
from recoverlib.module_groups import group_of
from recoverlib.quant.meta import is_quantized

PLACES = {"hf": None, "vllm on this CPU": Device(), "vllm on a GPU": Device(gpus=1, capability=(9, 0))}


@dataclass(frozen=True)
class ServingRoute:
    """One engine's two ways for one adapter: each a sentence, or ``refused: <reason>``."""

    engine: str
    dynamic: str
    merged: str
    auto: str  # dynamic, merged, or "by workload" (vLLM weighs LoRA's slowdown against swaps and restarts)

    def to_json(self) -> dict:
        return asdict(self)


def adapter_routes(info: AdapterInfo, quantized: bool = False) -> list[ServingRoute]:
    """How ``hf``, ``vllm`` on this CPU and ``vllm`` on a GPU serve ``info`` on a base (``quantized`` or
    not)."""
    return [_hf_route(info, quantized), *(_vllm_route(info, place, dev, quantized)
                                          for place, dev in PLACES.items() if dev is not None)]


def _merged_sentence(info: AdapterInfo, whole: bool) -> str:
    if swap_merge_problem(info):
        return ("a whole merged copy made by PEFT's merge_and_unload (the whole model loaded once), served in"
                " place of the base")
    if whole:
        return ("W + scale * B @ A merged into a whole checkpoint shard by shard (cached), served by a fresh"
                " engine")
    return "W + scale * B @ A of the touched modules swapped into the running model, and back"


def _hf_route(info: AdapterInfo, quantized: bool) -> ServingRoute:
    if info.layout == "linear" or not info.pieces:
        dynamic = "PEFT LoRA layers on the model as it loads"
    else:
        dynamic = (f"PEFT LoRA layers on a model with one nn.Linear per expert; the adapter renamed exactly"
                   f" from its {info.layout} layout ({_example(info, 'split')})")
    blocker = merge_blocker(quantized, False)
    merged = f"refused: {blocker}" if blocker else _merged_sentence(info, whole=False)
    auto = "dynamic" if blocker or swap_merge_problem(info) else "merged"
    return ServingRoute("hf", dynamic, merged, auto)


def _vllm_route(info: AdapterInfo, place: str, device: Device, quantized: bool) -> ServingRoute:
    problem = dynamic_problem({info.name: info}, device)
    if problem:
        dynamic = f"refused: {problem}"
    elif info.targets_experts or "router" in info.groups:
        converted = ", converted exactly" if info.layout != "published" else ""
        dynamic = (f"vLLM's fused-MoE LoRA, given the adapter under Mixtral's published per-expert names"
                   f" ({_example(info, 'published')}{converted})")
    else:
        dynamic = "vLLM's LoRA layers, adapters mixed in one batch"
    blocker = merge_blocker(quantized, False)
    merged = f"refused: {blocker}" if blocker else _merged_sentence(info, needs_fresh_engine(info, device))
    auto = ("refused" if blocker else "merged") if problem else ("dynamic" if blocker else "by workload")
    return ServingRoute(place, dynamic, merged, auto)


def _example(info: AdapterInfo, naming: str) -> str:
    """One expert (or router) module of ``info`` as ``naming`` calls it."""
    moe = [m for m in info.modules if "block_sparse_moe" in m.split(".")]
    return served_name(moe[0], naming) if moe else "no expert module"


def summarize_targets(info: AdapterInfo) -> dict[str, dict]:
    """Per module group: how many modules, which projections, in which layers (and experts)."""
    out: dict[str, dict] = {}
    for module in info.modules:
        parts = module.split(".")
        entry = out.setdefault(group_of(module),
                               {"modules": 0, "names": set(), "layers": set(), "experts": set()})
        entry["modules"] += 1
        entry["names"].add(parts[-1])
        for key in ("layers", "experts"):
            if key in parts and parts.index(key) + 1 < len(parts) and parts[parts.index(key) + 1].isdigit():
                entry[key].add(int(parts[parts.index(key) + 1]))
    return {g: {k: sorted(v) if isinstance(v, set) else v for k, v in e.items()}
            for g, e in sorted(out.items())}


def describe_targets(summary: Mapping[str, dict]) -> list[str]:
    """One line per group: ``experts  24 modules: w1, w2, w3 of 4 experts in 2 layers``."""
    lines = []
    for group, e in summary.items():
        where = f" of {len(e['experts'])} experts" if e["experts"] else ""
        layers = f" in {len(e['layers'])} layers" if e["layers"] else ""
        lines.append(f"{group:<11}{e['modules']:>5} modules: {', '.join(e['names'])}{where}{layers}")
    return lines


@dataclass(frozen=True)
class AdapterReport:
    """What ``recoverlib inspect ADAPTER`` prints: the adapter, its layout, its targets per module group, the
    base it was checked against (or why none), and each engine's routes."""

    info: AdapterInfo
    base: str | None  # the base the shapes were checked against
    unchecked: str | None  # why no base was checked
    routes: tuple[ServingRoute, ...]

    def to_json(self) -> dict:
        cfg = self.info.config
        return {"adapter": str(self.info.path), "rank": self.info.rank, "lora_alpha": cfg.get("lora_alpha"),
                "layout": self.info.layout, "layout_help": LAYOUT_HELP.get(self.info.layout, ""),
                "targets": summarize_targets(self.info), "checked_against": self.base,
                "not_checked": self.unchecked, "serving": [r.to_json() for r in self.routes]}

    def table(self) -> str:
        data = self.to_json()
        lines = [f"adapter {data['adapter']}: PEFT LoRA r={data['rank']}, lora_alpha={data['lora_alpha']}",
                 f"layout   {data['layout']}: {data['layout_help']}", "targets"]
        lines += [f"  {line}" for line in describe_targets(data["targets"])]
        lines.append(f"base     {self.base}: every LoRA pair fits its module" if self.base
                     else f"base     not checked ({self.unchecked})")
        lines.append("serving")
        for r in self.routes:
            lines += [f"  {r.engine} (auto: {r.auto})", f"    dynamic: {r.dynamic}",
                      f"    merged:  {r.merged}"]
        return "\n".join(lines)


def inspect_adapter(path, base=None) -> AdapterReport:
    """Read the adapter at ``path``, check it against ``base`` (else the local folder its config names, if
    any) and say how each engine serves it; an adapter for another model raises the one-line refusal."""
    info = read_adapter(Path(path).name, path)
    unchecked = None
    if base is None:
        named = info.config.get("base_model_name_or_path") or ""
        if named and (Path(named) / "config.json").is_file():
            base = named
        else:
            unchecked = "give --model BASE"
            if named:
                unchecked += f"; its config names {named!r}, not a local folder"
    if base is not None:
        info = check_adapters(base, {info.name: path})[0]
    quantized = bool(base) and is_quantized(base)
    return AdapterReport(info, str(base) if base else None, unchecked, tuple(adapter_routes(info, quantized)))
