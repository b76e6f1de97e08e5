"""The audit: what precision each module group really has after a quantize or a load, and its bytes.

Bytes are the weight storage held in memory: quantized payloads with their scales, zeros, absmax and group
indices, plus every plain parameter (norms are reported as ``other``); hqq/bnb string metadata is not
counted. :func:`check_plan` raises a one-line error naming the first group whose realised precision is not
the plan's (e.g. experts left in 16 bit by a quantizer that only replaces ``nn.Linear``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from recoverlib.errors import RecoverlibError
from recoverlib.module_groups import group_of
from recoverlib.quant import layerwise as lw
from recoverlib.quant.backends import BACKENDS, get_backend
from recoverlib.quant.checkpoint import Checkpoint, memory_name
from recoverlib.quant.plan import FEED_FORWARD, GROUPS, PrecisionPlan


@dataclass
class GroupReport:
    """One module group. ``variants``: (bits, group_size) -> params, so mixed precision stays visible."""

    params: int = 0
    bytes: int = 0
    dtypes: set[str] = field(default_factory=set)
    variants: dict[tuple[int, int | None], int] = field(default_factory=dict)
    quantized: set[bool] = field(default_factory=set)

    def add(
        self, bits: int, group_size: int | None, params: int, nbytes: int, dtype: str, quantized: bool
    ) -> None:
        self.params += params
        self.bytes += nbytes
        self.dtypes.add(dtype)
        self.quantized.add(quantized)
        self.variants[(bits, group_size)] = self.variants.get((bits, group_size), 0) + params

    @property
    def bits(self) -> int | None:
        """Bits of the group's storage (16 for bf16), or None if the group is empty or mixed."""
        return next(iter(self.variants))[0] if len(self.variants) == 1 else None

    @property
    def group_size(self) -> int | None:
        return next(iter(self.variants))[1] if len(self.variants) == 1 else None

    def label(self) -> str:
        if not self.variants:
            return "absent"
        ordered = sorted(self.variants, key=lambda v: -self.variants[v])  # largest share first
        return " + ".join(f"{bits}-bit" + (f" g{gs}" if gs else "") for bits, gs in ordered)

    def to_json(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size, "params": self.params, "bytes": self.bytes,
                "dtype": "+".join(sorted(self.dtypes))}


@dataclass
class AuditReport:
    """Per-group storage of a model (the groups it has weights in); ``planned_bytes`` is the planner's figure
    for the plan, when known."""

    groups: dict[str, GroupReport]
    other: GroupReport
    planned_bytes: int | None = None
    plan_dict: dict | None = None  # the plan the model was audited against, as PrecisionPlan.to_dict()
    calibration_texts: int = 0

    @property
    def plan_name(self) -> str | None:
        return self.plan_dict["name"] if self.plan_dict else None

    @property
    def backend(self) -> str | None:
        return self.plan_dict["backend"] if self.plan_dict else None

    @property
    def total_bytes(self) -> int:
        return sum(g.bytes for g in self.groups.values()) + self.other.bytes

    @property
    def total_params(self) -> int:
        return sum(g.params for g in self.groups.values()) + self.other.params

    @property
    def effective_bits(self) -> float:
        """Stored bits per weight parameter over the whole model (bf16 model: 16.0)."""
        return 8 * self.total_bytes / max(self.total_params, 1)

    def to_json(self) -> dict:
        return {
            "plan": self.plan_name,
            "backend": self.backend,
            "groups": {g: r.to_json() for g, r in self.groups.items()},
            "other": self.other.to_json(),
            "total_params": self.total_params,
            "total_bytes": self.total_bytes,
            "planned_bytes": self.planned_bytes,
            "effective_bits": round(self.effective_bits, 4),
        }

    def table(self) -> str:
        """A fixed-width text table: one row per group, then the totals."""
        head = (
            f"{'group':<11} {'precision':<20} {'dtype':<22} {'params':>12} {'bytes':>14} {'bits/param':>10}"
        )
        rows = [head, "-" * len(head)]
        for g, r in [*self.groups.items(), ("other", self.other)]:
            bpp = 8 * r.bytes / r.params if r.params else 0.0
            rows.append(
                f"{g:<11} {r.label():<20} {'+'.join(sorted(r.dtypes)):<22} {r.params:>12,} {r.bytes:>14,} "
                f"{bpp:>10.3f}"
            )
        rows.append(
            f"{'total':<11} {'':<20} {'':<22} {self.total_params:>12,} {self.total_bytes:>14,} "
            f"{self.effective_bits:>10.3f}"
        )
        if self.planned_bytes is not None:
            rows.append(f"planned bytes {self.planned_bytes:,} (measured {self.total_bytes:,})")
        return "\n".join(rows)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)


class _Auditor:
    """Adds modules' storage to per-group totals; pieces of one model may be added one after another."""

    def __init__(self):
        self.backends = BACKENDS.all()
        self.groups = {g: GroupReport() for g in GROUPS}
        self.other = GroupReport()
        self.seen: set[int] = set()

    def visit(self, name: str, module) -> None:
        if id(module) in self.seen:
            return
        self.seen.add(id(module))
        for backend in self.backends:
            storage = backend.describe(module)
            if storage is not None:
                target = self.groups.get(group_of(name), self.other)
                target.add(
                    storage.bits, storage.group_size, storage.params, storage.bytes, storage.dtype, True
                )
                return
        for _, p in module.named_parameters(recurse=False):
            if id(p) in self.seen:  # tied weights count once
                continue
            self.seen.add(id(p))
            target = self.groups.get(group_of(name), self.other)
            target.add(
                8 * p.element_size(),
                None,
                p.numel(),
                p.numel() * p.element_size(),
                str(p.dtype).removeprefix("torch."),
                False,
            )
        for child_name, child in module.named_children():
            self.visit(f"{name}.{child_name}" if name else child_name, child)

    def report(self, plan: PrecisionPlan | None, planned_bytes: int | None) -> AuditReport:
        # only the groups the model has: a Mixtral has no mlp, a dense model no experts or router, Gemma no
        # lm_head
        groups = {g: r for g, r in self.groups.items() if r.variants}
        return AuditReport(groups, self.other, planned_bytes, plan.to_dict() if plan else None)


def audit_model(model, plan: PrecisionPlan | None = None, planned_bytes: int | None = None) -> AuditReport:
    """Measure every module group of a (quantized, possibly PEFT-wrapped) HF model."""
    auditor = _Auditor()
    auditor.visit("", _unwrap(model))
    return auditor.report(plan, planned_bytes)


def audit_checkpoint(
    path, plan: PrecisionPlan, planned_bytes: int | None = None, progress: bool = False
) -> AuditReport:
    """Audit a checkpoint written by the streaming quantizer piece by piece (one decoder layer in memory at a
    time)."""
    backend = get_backend(plan.backend)
    config = lw.model_config(Path(path))
    auditor = _Auditor()
    with backend.session(plan, "cpu"):
        pieces = lw.iter_pieces(Path(path), config, plan, backend)
        for prefix, module in tqdm(
            pieces, desc="audit", unit="piece", total=config.num_hidden_layers + 1, disable=not progress
        ):
            auditor.seen = set()  # ids of a freed piece's objects may be reused by the next one
            auditor.visit(prefix, module)
            del module
    return auditor.report(plan, planned_bytes)


def audit_plain_checkpoint(path) -> AuditReport:
    """Audit an unquantized safetensors checkpoint from its headers alone (no tensor is read): every tensor is
    a plain parameter of its module's group, at its stored dtype."""
    ckpt = Checkpoint.open(path)
    auditor = _Auditor()
    for name, size in ckpt.sizes.items():
        module = memory_name(name).rsplit(".", 1)[0]
        bits, dtype = ckpt.dtypes[name]
        auditor.groups.get(group_of(module), auditor.other).add(
            bits, None, 8 * size // bits, size, dtype, False
        )
    return auditor.report(None, None)


def _unwrap(model):
    # PEFT keeps the HF model under base_model.model; module names then match the plain model's.
    inner = getattr(getattr(model, "base_model", None), "model", None)
    return inner if inner is not None and hasattr(model, "peft_config") else model


def check_plan(report: AuditReport, plan: PrecisionPlan) -> None:
    """Raise a one-line RecoverlibError naming the first group whose realised precision differs from the
    plan. A plan's ``experts`` on a dense model (or ``mlp`` on a MoE) is not looked for when the group the
    model has in its place was planned the same (a preset)."""
    for g in GROUPS:
        want, got = plan.group(g), report.groups.get(g)
        if got is None:
            twin = next((f for f in FEED_FORWARD if f != g), None) if g in FEED_FORWARD else None
            if want.quantized and not (twin in report.groups and plan.group(twin) == want):
                raise RecoverlibError(
                    f"{g}: planned {want.label()} but the model has no {g} weights (plan {plan.name!r})"
                )
            continue  # e.g. lm_head tied to the embeddings
        realised = got.label() if len(got.variants) == 1 else f"mixed ({got.label()})"
        if not want.quantized:
            if True in got.quantized:
                raise RecoverlibError(f"{g}: planned 16-bit but realised {realised} (plan {plan.name!r})")
            continue
        ok = got.quantized == {True} and got.bits == want.bits and got.group_size == want.group_size
        if not ok:
            dtype = "+".join(sorted(got.dtypes))
            raise RecoverlibError(
                f"{g}: planned {want.label()} but realised {realised} [{dtype}] (plan {plan.name!r})"
            )
