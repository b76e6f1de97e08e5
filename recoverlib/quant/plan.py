"""Precision plans: bits and group size per module group, named presets, and plans read from JSON files.

A plan names its backend and gives each module group a :class:`GroupPrecision`; ``bits=None`` keeps the group
in the compute dtype. Groups: ``attention`` (q/k/v/o), ``experts`` (w1/w2/w3 = gate/up/down projections of
every expert), ``router`` (the MoE gate), ``mlp`` (a dense model's gate/up/down projections), ``lm_head`` and
``embeddings``. The router stays in the compute dtype by default; each preset has a ``+router`` twin that
quantizes it like attention (the ablation, MoE bases only).

One plan serves both kinds of base: a preset gives its feed-forward precision to ``experts`` and ``mlp``
alike (``hqq-attn4-exp2`` stores a dense MLP in 2 bits), and :meth:`PrecisionPlan.fit_to` keeps the groups a
model has. A plan that quantizes a group the model lacks, with no equal precision for the group it has in its
place (a JSON plan naming only ``experts`` for a dense Mistral, a ``+router`` preset for it, ``lm_head`` for
Gemma's tied head), is a one-line error.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from recoverlib.architectures import architecture_of
from recoverlib.errors import RecoverlibError
from recoverlib.module_groups import GROUPS

FEED_FORWARD = ("experts", "mlp")  # one model has one of them: a MoE's experts, a dense model's MLP
ROUTER_SUFFIX = "+router"
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")
# GPTQ's column order (GPTQModel 7.6; every one gives static groups, g_idx[i] = i // group_size, which vLLM
# serves): "none" natural order, "group-aware" (GPTQModel's act_group_aware, its default) orders columns by
# activation within groups and groups by activation, "static-groups" (desc_act with static_groups) finds each
# group's scale first, then quantizes columns in descending activation order.
GPTQ_ORDERS = ("group-aware", "none", "static-groups")
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class GroupPrecision:
    """Storage of one module group. ``bits=None``: not quantized. ``group_size=None``: one scale per row."""

    bits: int | None = None
    group_size: int | None = None

    def __post_init__(self):
        if self.bits is None:
            if self.group_size is not None:
                raise RecoverlibError(
                    f"group_size {self.group_size} given for an unquantized group (bits null)"
                )
            return
        if self.bits not in (2, 3, 4, 8):
            raise RecoverlibError(f"bits must be 2, 3, 4, 8 or null (got {self.bits})")
        if self.group_size is not None and (self.group_size < 8 or self.group_size & (self.group_size - 1)):
            raise RecoverlibError(f"group_size must be a power of two >= 8 or null (got {self.group_size})")

    @property
    def quantized(self) -> bool:
        return self.bits is not None

    def label(self) -> str:
        if self.bits is None:
            return "16-bit"
        return f"{self.bits}-bit" + (f" g{self.group_size}" if self.group_size else " per-row")


FULL = GroupPrecision()


@dataclass(frozen=True)
class PrecisionPlan:
    """Which backend quantizes, and each group's precision. Validated once, at construction."""

    backend: str
    attention: GroupPrecision = FULL
    experts: GroupPrecision = FULL
    mlp: GroupPrecision = FULL
    router: GroupPrecision = FULL
    lm_head: GroupPrecision = FULL
    embeddings: GroupPrecision = FULL
    compute_dtype: str = "bfloat16"
    name: str = field(default="custom", compare=False)
    order: str = GPTQ_ORDERS[0]  # GPTQ only: the column order (GPTQ_ORDERS)

    def __post_init__(self):
        if not self.backend or not isinstance(self.backend, str):
            raise RecoverlibError(f"plan {self.name!r}: backend must be a name (got {self.backend!r})")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise RecoverlibError(
                f"plan {self.name!r}: compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}"
            )
        for g in GROUPS:
            if not isinstance(getattr(self, g), GroupPrecision):
                raise RecoverlibError(f"plan {self.name!r}: group {g} is not a GroupPrecision")
        if self.order not in GPTQ_ORDERS or (self.order != GPTQ_ORDERS[0] and self.backend != "gptq"):
            raise RecoverlibError(f"plan {self.name!r}: order is GPTQ's column order, one of"
                                  f" {', '.join(GPTQ_ORDERS)} (got {self.order!r} for {self.backend})")

    def group(self, name: str) -> GroupPrecision:
        return getattr(self, name)

    def groups(self) -> dict[str, GroupPrecision]:
        return {g: self.group(g) for g in GROUPS}

    def with_router(self) -> PrecisionPlan:
        """The same plan with the router quantized like attention (the router ablation)."""
        src = self.attention if self.attention.quantized else self.experts
        if not src.quantized:
            raise RecoverlibError(
                f"plan {self.name!r}: nothing is quantized, so no precision to give the router"
            )
        return replace(self, router=src, name=self.name + ROUTER_SUFFIX)

    def fit_to(self, groups, what: str = "the model") -> PrecisionPlan:
        """This plan for a model that has only ``groups`` (its other groups kept 16-bit: they hold nothing).

        A quantized group the model lacks is a one-line error, except ``experts`` or ``mlp`` when the plan
        gives the group the model has in its place the same precision (a preset, or a JSON plan written for
        both kinds). ``what`` names the model in messages (e.g. ``a dense mistral model``).
        """
        present = set(groups)
        for g in GROUPS:
            prec = self.group(g)
            if g in present or not prec.quantized:
                continue
            twin = next((f for f in FEED_FORWARD if f != g), None) if g in FEED_FORWARD else None
            if twin in present and self.group(twin) == prec:
                continue
            raise RecoverlibError(f"plan {self.name!r}: {_absent_message(g, prec, twin, what)}")
        return replace(self, **{g: FULL for g in GROUPS if g not in present})

    def to_dict(self) -> dict:
        order = {} if self.order == GPTQ_ORDERS[0] else {"order": self.order}
        return {"name": self.name, "backend": self.backend, "compute_dtype": self.compute_dtype, **order,
                **{g: asdict(self.group(g)) for g in GROUPS}}

    @classmethod
    def from_dict(cls, data: dict, name: str = "custom") -> PrecisionPlan:
        """Build a plan from ``{"backend": ..., "experts": {"bits": 4, "group_size": 64}, ...}``."""
        known = {"name", "backend", "compute_dtype", "order", *GROUPS}
        extra = sorted(set(data) - known)
        if extra:
            raise RecoverlibError(f"plan {name!r}: unknown key(s) {extra}; known: {sorted(known)}")
        groups = {}
        for g in GROUPS:
            spec = data.get(g) or {}
            if not isinstance(spec, dict) or set(spec) - {"bits", "group_size"}:
                raise RecoverlibError(
                    f"plan {name!r}: {g} must be {{'bits': int|null, 'group_size': int|null}}"
                )
            groups[g] = GroupPrecision(spec.get("bits"), spec.get("group_size"))
        if "backend" not in data:
            raise RecoverlibError(f"plan {name!r}: missing 'backend'")
        return cls(backend=data["backend"], compute_dtype=data.get("compute_dtype", "bfloat16"),
                   name=data.get("name", name), order=data.get("order", GPTQ_ORDERS[0]), **groups)


def _absent_message(group: str, prec: GroupPrecision, twin: str | None, what: str) -> str:
    if group == "router":
        return f"quantizes the router, but {what} has none: use a plan without +router"
    if group == "lm_head":
        return f"quantizes lm_head, but {what} ties it to its embeddings (no lm_head weights): keep it null"
    if twin is not None:
        return (f"gives {group} {prec.label()}, but {what} has no {group}: give its feed-forward weights as "
                f"{twin} (the same precision in both makes one plan for both kinds)")
    return f"quantizes {group}, which {what} does not have"


def _preset(
    name: str, backend: str, attention: GroupPrecision, feed_forward: GroupPrecision
) -> PrecisionPlan:
    """A preset: ``feed_forward`` is the experts' precision on a MoE base and the MLP's on a dense one."""
    return PrecisionPlan(
        backend=backend, attention=attention, experts=feed_forward, mlp=feed_forward, name=name
    )


def _base_presets() -> list[PrecisionPlan]:
    g = GroupPrecision
    return [
        # bitsandbytes NF4 and LLM.int8 use fixed block sizes (64; per row), as the seed's recipe did.
        _preset("bnb-nf4", "bnb", g(4, 64), g(4, 64)),
        _preset("bnb-int8", "bnb", g(8, None), g(8, None)),
        _preset("hqq-4", "hqq", g(4, 64), g(4, 64)),
        _preset("hqq-attn4-exp2", "hqq", g(4, 64), g(2, 16)),
        _preset("hqq-attn4-exp3", "hqq", g(4, 64), g(3, 128)),
        _preset("gptq-4", "gptq", g(4, 128), g(4, 128)),
        _preset("gptq-attn8-exp4", "gptq", g(8, 128), g(4, 128)),
    ]


def _all_presets() -> dict[str, PrecisionPlan]:
    out = {}
    for plan in _base_presets():
        out[plan.name] = plan
        routed = plan.with_router()
        out[routed.name] = routed
    return out


PRESETS: dict[str, PrecisionPlan] = _all_presets()


def load_plan(spec: str | Path | PrecisionPlan) -> PrecisionPlan:
    """A preset name (``hqq-4``, ``bnb-nf4+router``, ...), a JSON plan file, or a plan (returned as is)."""
    if isinstance(spec, PrecisionPlan):
        return spec
    text = str(spec)
    if text in PRESETS:
        return PRESETS[text]
    path = Path(text)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise RecoverlibError(f"plan file {path}: no such file")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise RecoverlibError(
                f"plan file {path}: not valid JSON ({err.msg}, line {err.lineno})"
            ) from None
        if not isinstance(data, dict):
            raise RecoverlibError(f"plan file {path}: expected a JSON object")
        return PrecisionPlan.from_dict(data, name=path.stem)
    raise RecoverlibError(f"unknown plan {text!r}: give a JSON file or one of {', '.join(PRESETS)}")


def plan_for_model(spec: str | Path | PrecisionPlan, cfg: dict, what: str = "model") -> PrecisionPlan:
    """The plan ``spec`` (see :func:`load_plan`) fitted to the model ``cfg`` describes
    (:meth:`PrecisionPlan.fit_to`): what ``quantize``, the audit and the planners apply."""
    arch = architecture_of(cfg, what)
    return load_plan(spec).fit_to(arch.groups(), arch.describe())
