"""The backend interface: a backend is one file, registered by name in :mod:`recoverlib.quant.backends`.

A backend writes a quantized checkpoint following a :class:`PrecisionPlan` (by default through recoverlib's
piece loop, one linear at a time with :meth:`QuantBackend.quantize_linear`), rebuilds its quantized linears
for loading and the audit, describes them, and says how many bytes a quantized linear of a given shape takes
(for the planner). Backend modules import their heavy library only inside methods.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from recoverlib.errors import RecoverlibError
from recoverlib.quant.pieces import write_piecewise
from recoverlib.quant.plan import DTYPE_BYTES, GroupPrecision, PrecisionPlan


@dataclass(frozen=True)
class LinearStorage:
    """How one quantized module is stored: nominal bits, group size (None = per row), weights it holds,
    bytes."""

    bits: int
    group_size: int | None
    params: int  # out_features * in_features, + out_features with a bias
    bytes: int  # quantized payload plus its scales/zeros/absmax/indices and bias, as held in memory
    dtype: str  # storage kind, e.g. "nf4/uint8", "hqq/uint8", "gptq/int32"


class QuantBackend(ABC):
    """One quantization library behind one interface. Subclasses register under :attr:`name`."""

    name: ClassVar[str]
    pip_name: ClassVar[str]  # what to pip install when the library is missing

    def require(self, module: str):
        """Import the backend's library, or raise a one-line error naming what to install."""
        try:
            return importlib.import_module(module)
        except ImportError as err:
            raise RecoverlibError(
                f"backend {self.name!r} needs {module} ({err}): pip install {self.pip_name}"
            ) from None

    @abstractmethod
    def validate(self, plan: PrecisionPlan) -> None:
        """Raise a one-line error for a precision this backend cannot realise (before any work)."""

    @abstractmethod
    def load(self, path: Path, plan: PrecisionPlan, device_map: str | dict | None = None):
        """Load a checkpoint this backend wrote (one file or HF shards, read shard by shard); return the HF
        model in eval mode. ``device_map``: None (CPU), a device (``cuda:0``), ``"auto"`` or accelerate's
        dict."""

    @abstractmethod
    def describe(self, module) -> LinearStorage | None:
        """Storage of ``module`` if it is one of this backend's quantized modules, else None."""

    # Layer-by-layer hooks (the streaming quantizer, :mod:`recoverlib.quant.stream`). ``device``: where the
    # quantization runs ("cpu", "cuda", "cuda:1"); written tensors always come back to the CPU.
    calibrated: ClassVar[bool] = False  # quantizing needs calibration texts (GPTQ)

    def write_streamed(self, job, source, record) -> Path:
        """Quantize ``job.model_path`` (a :class:`~recoverlib.quant.stream.StreamJob`) into a folder under
        ``record.work`` holding ``config.json`` and HF shards; return that folder. ``source``: the 16-bit
        :class:`~recoverlib.quant.checkpoint.Checkpoint`; ``record``: the run's
        :class:`~recoverlib.quant.progress.RunRecord`, for resuming. The default is recoverlib's piece loop
        (:mod:`recoverlib.quant.pieces`): one decoder layer at a time through :meth:`quantize_linear`."""
        return write_piecewise(self, job, source, record)

    def session(self, plan: PrecisionPlan, device: str):
        """A context held around a streaming quantize or load (e.g. a library-wide setting, restored on
        exit)."""
        return nullcontext()

    def quantize_linear(self, linear, prec: GroupPrecision, plan: PrecisionPlan, device: str):
        """A quantized module replacing the 16-bit ``nn.Linear`` ``linear``, quantized on ``device``."""
        raise RecoverlibError(f"backend {self.name!r} quantizes in its own loop, not linear by linear")

    def is_quantized(self, module) -> bool:
        """True for this backend's quantized modules (those :meth:`linear_state` serializes)."""
        return self.describe(module) is not None

    def linear_state(self, module) -> dict:
        """``{key: tensor}`` of one quantized module as the checkpoint stores it (keys relative to the
        module)."""
        return module.state_dict()

    def load_linear(
        self, state: dict, shape: tuple[int, int], prec: GroupPrecision, plan: PrecisionPlan, device: str
    ):
        """Rebuild a quantized module from its :meth:`linear_state` tensors; ``shape`` = (out, in)
        features."""
        raise RecoverlibError(f"backend {self.name!r} does not load layer by layer")

    def checkpoint_config(self, config: dict, plan: PrecisionPlan) -> dict:
        """The ``config.json`` a streamed checkpoint carries, from the source's."""
        return config

    @abstractmethod
    def linear_bytes(
        self, out_features: int, in_features: int, prec: GroupPrecision, compute_dtype: str
    ) -> int:
        """Bytes of one quantized ``out x in`` linear at ``prec`` as :meth:`describe` counts them (weights
        only: a bias is :meth:`bias_bytes`)."""

    def bias_bytes(self, out_features: int, compute_dtype: str) -> int:
        """Bytes of a quantized linear's bias (Qwen2's q/k/v): kept in the compute dtype."""
        return out_features * DTYPE_BYTES[compute_dtype]


def bias_storage(module) -> tuple[int, int]:
    """``(params, bytes)`` of a quantized module's bias, (0, 0) without one; :meth:`QuantBackend.describe`
    adds them to the weight's."""
    bias = getattr(module, "bias", None)
    if bias is None:
        return 0, 0
    return bias.numel(), bias.numel() * bias.element_size()


def require_group_sizes(
    backend: str, plan: PrecisionPlan, allowed: dict[int, tuple[int | None, ...]]
) -> None:
    """Raise unless every quantized group's (bits, group_size) is in ``allowed`` (bits -> group sizes)."""
    for group, prec in plan.groups().items():
        if not prec.quantized:
            continue
        if prec.bits not in allowed:
            raise RecoverlibError(
                f"plan {plan.name!r}: {backend} cannot store {group} in {prec.bits} bits (supports "
                f"{sorted(allowed)})"
            )
        if prec.group_size not in allowed[prec.bits]:
            raise RecoverlibError(
                f"plan {plan.name!r}: {backend} {prec.bits}-bit needs group_size in "
                f"{list(allowed[prec.bits])} ({group} has {prec.group_size})"
            )
