"""Safetensors checkpoints tensor by tensor: read a (sharded) HF folder lazily, write HF-sharded output.

Reading goes through safetensors' ``safe_open``, one open per tensor, so a tensor is a view of its own memory
map that costs memory only once used and releases it when freed (see :meth:`Checkpoint.read`). Writing:
:func:`write_sharded` packs named tensor groups into ``model-0000i-of-0000n.safetensors`` files of at most
``max_shard_bytes`` (one ``model.safetensors`` when everything fits, as transformers' ``save_pretrained``
does) plus ``model.safetensors.index.json``, holding one shard in memory at a time.

Names: Mixtral's published checkpoints call the MoE block ``block_sparse_moe`` and expert projections
``w1/w2/w3``; in memory recoverlib's split block (:mod:`recoverlib.quant.moe`) calls them ``mlp`` and
``gate_proj/down_proj/up_proj``. :func:`memory_name` and :func:`disk_name` convert between the two.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from recoverlib.errors import RecoverlibError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Expert projection names inside a split block, with Mixtral's on-disk names (vLLM and the original
# checkpoints).
EXPERT_PROJ = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
DISK_PROJ = {v: k for k, v in EXPERT_PROJ.items()}
_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


def parse_size(text: str | int) -> int:
    """``"5GB"`` -> 5_000_000_000 bytes (decimal units as transformers' ``max_shard_size``; ``GiB``
    binary)."""
    if isinstance(text, int):
        return text
    s = text.strip().upper().replace(" ", "")
    for unit in sorted(_UNITS, key=len, reverse=True):
        if s.endswith(unit):
            try:
                value = float(s[: -len(unit)])
            except ValueError:
                break
            if value > 0:
                return int(value * _UNITS[unit])
            break
    raise RecoverlibError(f"size {text!r}: give a positive number with a unit, e.g. 5GB, 500MB, 29GiB")


def disk_name(key: str) -> str:
    """In-memory split name -> Mixtral's checkpoint name (``mlp.experts.0.gate_proj`` ->
    ``block_sparse_moe.experts.0.w1``, ``mlp.gate`` -> ``block_sparse_moe.gate``). A dense model's
    ``mlp.gate_proj`` keeps its name: only an ``mlp`` holding experts or a router is a MoE block."""
    return _renamed(key, "mlp", "block_sparse_moe", EXPERT_PROJ)


def memory_name(key: str) -> str:
    """Mixtral's checkpoint name -> the split block's in-memory name (inverse of :func:`disk_name`)."""
    return _renamed(key, "block_sparse_moe", "mlp", DISK_PROJ)


def _renamed(key: str, block: str, new_block: str, projections: dict[str, str]) -> str:
    parts = key.split(".")
    out = []
    for i, p in enumerate(parts):
        if p == block and i + 1 < len(parts) and parts[i + 1] in ("experts", "gate"):
            p = new_block
        elif p in projections and i >= 2 and parts[i - 2] == "experts":
            p = projections[p]
        out.append(p)
    return ".".join(out)


def _open(file: Path):
    from safetensors import SafetensorError, safe_open

    if not file.is_file():
        raise RecoverlibError(f"{file}: missing checkpoint shard")
    try:
        return safe_open(str(file), framework="pt")
    except (SafetensorError, OSError) as err:
        raise RecoverlibError(f"{file}: unreadable safetensors file, truncated or corrupt ({err})") from None


@dataclass(frozen=True)
class Checkpoint:
    """A safetensors HF folder: which file holds each tensor (by its name on disk). No tensor is read here."""

    folder: Path
    files: dict[str, Path]  # tensor name on disk -> file
    sizes: dict[str, int]  # tensor name on disk -> bytes
    dtypes: dict[str, tuple[int, str]]  # tensor name on disk -> (bits per element, torch dtype name)

    @classmethod
    def open(cls, folder: str | Path) -> Checkpoint:
        """Index a folder (``model.safetensors.index.json`` or one ``model.safetensors``); raise on a
        missing, truncated or inconsistent shard before any work starts."""
        folder = Path(folder)
        index = folder / INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map") or {}
            wanted = {f: set() for f in weight_map.values()}
            for name, f in weight_map.items():
                wanted[f].add(name)
        elif (folder / SINGLE_FILE).is_file():
            wanted = {SINGLE_FILE: None}
        else:
            raise RecoverlibError(f"{folder}: no {INDEX_FILE} and no {SINGLE_FILE}")
        return cls.of_files(folder, {folder / f: names for f, names in wanted.items()})

    @classmethod
    def of_files(cls, folder: Path, wanted: dict[Path, set[str] | None]) -> Checkpoint:
        """Index the given files (each with the names it must hold, or None for whatever it holds)."""
        files, sizes, dtypes = {}, {}, {}
        for file, names in wanted.items():
            with _open(file) as fh:
                keys = set(fh.keys())
                _check_complete(file, fh, keys)
                if names is not None and names - keys:
                    raise RecoverlibError(
                        f"{file}: lacks {len(names - keys)} tensor(s) its index lists, e.g. "
                        f"{min(names - keys)}"
                    )
                for k in sorted(keys):
                    sl = fh.get_slice(k)
                    sizes[k] = math.prod(sl.get_shape()) * _dtype_bytes(sl.get_dtype())
                    dtypes[k] = (
                        8 * _dtype_bytes(sl.get_dtype()),
                        _TORCH_NAMES.get(sl.get_dtype(), sl.get_dtype().lower()),
                    )
                    files[k] = file
        return cls(folder, files, sizes, dtypes)

    def read(self, names: Iterable[str], device: str = "cpu") -> dict:
        """Tensors by disk name, backed by the file's memory map: nothing is resident until a tensor is used
        (940 MB of expert tensors added 3.6 MB of RSS here), and a used tensor's pages stay resident while its
        map lives. The file is opened for each tensor, so each tensor has its own map and freeing the tensor
        (a 16-bit linear once quantized) releases its pages; one map shared by a whole layer would keep every
        page read until the last tensor of the layer was freed."""
        out = {}
        for k in names:
            if k not in self.files:
                raise RecoverlibError(f"{self.folder}: checkpoint has no tensor {k}")
            with _open(self.files[k]) as fh:
                try:
                    out[k] = fh.get_tensor(k).to(device)
                except Exception as err:  # safetensors raises its own error types for truncated data
                    raise RecoverlibError(
                        f"{self.files[k]}: cannot read {k} ({type(err).__name__}: {err})"
                    ) from None
        return out

    def names_with_prefix(self, prefix: str) -> list[str]:
        return sorted(k for k in self.files if k.startswith(prefix))


def _check_complete(file: Path, fh, keys: set[str]) -> None:
    """A file cut short keeps a valid header; its size is then below the header's last data offset."""
    end = 0
    for k in keys:
        sl = fh.get_slice(k)
        end += math.prod(sl.get_shape()) * _dtype_bytes(sl.get_dtype())
    header = _header_bytes(file)
    if file.stat().st_size < 8 + header + end:
        raise RecoverlibError(
            f"{file}: truncated ({file.stat().st_size:,} bytes, its header describes {8 + header + end:,})"
        )


def _header_bytes(file: Path) -> int:
    with open(file, "rb") as fh:
        return int.from_bytes(fh.read(8), "little")


_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


_TORCH_NAMES = {
    "BF16": "bfloat16",
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "U8": "uint8",
    "I8": "int8",
    "I32": "int32",
    "I64": "int64",
    "BOOL": "bool",
}


def _dtype_bytes(dtype: str) -> int:
    return _DTYPE_BYTES[dtype]


def save_tensors(tensors: dict, file: Path) -> None:
    """Write one safetensors file atomically (temp name, fsync, rename); a full disk is one line."""
    from safetensors.torch import save_file

    tmp = file.with_name(file.name + ".tmp")
    try:
        save_file(
            {k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"}
        )
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, file)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise RecoverlibError(f"writing {file}: {err.strerror or err}") from None


def write_sharded(source: Checkpoint, names: list[str], out_dir: Path, max_shard_bytes: int,
                  progress: bool = False) -> list[Path]:
    """Copy ``names`` (in this order) from ``source`` into HF shards of at most ``max_shard_bytes`` each (a
    tensor larger than that gets a shard of its own) plus the index; one shard's tensors in memory at a time.
    Returns the files written: one ``model.safetensors`` (no index) when everything fits in one shard."""
    from tqdm.auto import tqdm

    plan = _shard_plan([(k, source.sizes[k]) for k in names], max_shard_bytes)
    n = max(plan.values(), default=0) + 1
    files = [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for shard in tqdm(range(n), desc="write shards", unit="shard", disable=not progress):
        save_tensors(source.read([k for k in names if plan[k] == shard]), out_dir / files[shard])
    if n > 1:
        total = sum(source.sizes[k] for k in names)
        index = {"metadata": {"total_size": total}, "weight_map": {k: files[s] for k, s in plan.items()}}
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return [out_dir / f for f in files]


def rewrite_names(src: Path, dst: Path, rename, consume: bool = False) -> None:
    """Copy the safetensors folder ``src`` into ``dst`` shard by shard with every tensor renamed by
    ``rename`` (the shards and the index keep their files; other files are copied as they are). One shard in
    memory at a time; ``consume`` removes each source shard once its copy is on disk, so the copy needs
    little more disk than one shard."""
    import shutil

    from safetensors import safe_open

    dst.mkdir(parents=True, exist_ok=True)
    shards = sorted(src.glob("*.safetensors"))
    for file in shards:
        with safe_open(str(file), framework="pt") as fh:
            tensors = {rename(k): fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no iter)
        save_tensors(tensors, dst / file.name)
        del tensors
        if consume:
            file.unlink()
    for other in sorted(src.iterdir()):
        if other.is_file() and other.suffix != ".safetensors":
            if other.name == INDEX_FILE:
                index = json.loads(other.read_text())
                index["weight_map"] = {rename(k): f for k, f in index.get("weight_map", {}).items()}
                (dst / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
            else:
                shutil.copy2(other, dst / other.name)


def expert_layout(names) -> str | None:
    """How a Mixtral checkpoint names its MoE experts: ``published`` (``block_sparse_moe.experts.N.w1``, the
    layout of Mixtral's own checkpoints, which vLLM reads), ``split`` (``mlp.experts.N.gate_proj``,
    GPTQModel's and transformers 5's per-expert names) or ``fused`` (``mlp.experts.gate_up_proj``); None
    without experts."""
    for name in names:
        parts = name.split(".")
        if "experts" not in parts:
            continue
        i = parts.index("experts")
        if parts[i - 1] == "block_sparse_moe":
            return "published"
        return "split" if i + 1 < len(parts) and parts[i + 1].isdigit() else "fused"
    return None


def _shard_plan(sizes: list[tuple[str, int]], max_bytes: int) -> dict[str, int]:
    plan, shard, used = {}, 0, 0
    for name, size in sizes:
        if used and used + size > max_bytes:
            shard, used = shard + 1, 0
        plan[name] = shard
        used += size
    return plan
