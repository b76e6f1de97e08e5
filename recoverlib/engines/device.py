"""The machine an engine runs on, the dtype ``auto`` means there, and what the engine settings ask of it.

Every setting the device cannot honour is refused here, before an engine starts, in one line naming what to
change (vLLM's own errors come minutes later, from inside a worker). The rules mirror vLLM 0.32's: bf16 needs
compute capability 8.0 (``CudaPlatform.check_if_supports_dtype``), ``auto`` keeps the checkpoint's 16-bit
dtype where supported and otherwise takes the device's first supported dtype
(``config.model._resolve_auto_dtype``).
"""

from __future__ import annotations

from dataclasses import dataclass

from recoverlib.engines.base import DTYPES
from recoverlib.errors import RecoverlibError

BF16_CAPABILITY = (8, 0)  # Ampere; T4 (Turing) is 7.5, V100 7.0


@dataclass(frozen=True)
class Device:
    """What the engines run on: CPU, or ``gpus`` CUDA GPUs (the lowest compute capability and memory among
    them)."""

    gpus: int = 0
    capability: tuple[int, int] | None = None  # (major, minor) of the weakest GPU
    memory_bytes: int | None = None  # of the smallest GPU
    name: str = "cpu"

    @property
    def is_cpu(self) -> bool:
        return self.gpus == 0

    @property
    def supported_dtypes(self) -> tuple[str, ...]:
        """In preference order, as vLLM lists them (x86/aarch64 CPUs do bf16 and fp16)."""
        if self.is_cpu or self.capability >= BF16_CAPABILITY:
            return ("bfloat16", "float16", "float32")
        return ("float16", "float32")


def current_device() -> Device:
    """The CUDA GPUs torch sees, else the CPU (the HF engine; the vLLM engine asks vLLM, which leaves CUDA
    alone)."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return Device()
    props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    weakest = min(props, key=lambda p: (p.major, p.minor))
    return Device(gpus=len(props), capability=(weakest.major, weakest.minor),
                  memory_bytes=min(p.total_memory for p in props), name=weakest.name)


def resolve_dtype(requested: str, device: Device, checkpoint_dtype: str | None = None) -> str:
    """The dtype to compute in: ``requested``, or for ``auto`` the checkpoint's 16-bit dtype where the device
    supports it, else the device's preferred one (bf16 on CPUs and Ampere+, fp16 on pre-Ampere GPUs)."""
    if requested not in DTYPES:
        raise RecoverlibError(f"dtype {requested!r}: choose one of {', '.join(DTYPES)}")
    supported = device.supported_dtypes
    if requested != "auto":
        if requested not in supported:
            raise RecoverlibError(
                f"{device.name} (compute capability {'.'.join(map(str, device.capability))}) cannot compute "
                "in"
                f" {requested} (needs {'.'.join(map(str, BF16_CAPABILITY))}): use --dtype float16 or "
                "--dtype auto"
            )
        return requested
    if checkpoint_dtype in supported and checkpoint_dtype != "float32":
        return checkpoint_dtype
    return supported[0]


def check_vllm_settings(config, device: Device, cores: int) -> None:
    """Refuse, in one line each, what vLLM cannot do on ``device`` (with ``cores`` CPU cores for this process)
    with :class:`EngineConfig` ``config``."""
    tp = config.tensor_parallel_size
    if device.is_cpu:
        if config.gpu_memory_utilization is not None:
            raise RecoverlibError(
                "--gpu-memory-utilization applies to GPUs; on CPU size the KV cache with --kv-cache-gib"
            )
        if tp > cores:
            raise RecoverlibError(
                f"tensor parallel size {tp} on CPU binds each rank to its own cores; this machine"
                f" has {cores}: use --tensor-parallel-size {cores} or fewer"
            )
        return
    if tp > device.gpus:
        raise RecoverlibError(f"tensor parallel size {tp} needs {tp} GPUs; this machine has {device.gpus}:"
                              f" use --tensor-parallel-size {device.gpus}")


def cpu_thread_binding(tp: int, cores: list[int]) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for ``tp`` CPU ranks: ``cores`` split into ``tp`` contiguous groups
    ("0|1").

    vLLM's ``auto`` binding gives each rank a NUMA node of its own, and refuses tensor parallel 2 on a machine
    with one node ("Not enough allowed NUMA nodes to bind threads of 2 local CPUWorkers"); explicit lists
    work.
    """
    cores = sorted(cores)
    per = len(cores) // tp
    groups = [cores[i * per:(i + 1) * per] for i in range(tp)]
    return "|".join(",".join(map(str, g)) for g in groups)
