"""A tiny Mixtral that knows the synthetic task, plus LoRA adapters that differ as the winners' did.

``make_trained_tiny`` writes the same layout as :func:`recoverlib.tiny.make_tiny`, plus the task it learned::

    OUT/model/             HF folder: the tiny base, full-parameter trained on OUT/task/train.csv
    OUT/adapters/<name>/   PEFT folders (each with recoverlib_adapter.json: its prime and history)
    OUT/task/              the synthetic task CSVs
    OUT/trained.json       cache key, per-epoch base losses, adapter results, seconds

Results are cached under ``$RECOVERLIB_CACHE`` (default ``~/.cache/recoverlib``), keyed on the arguments,
the source of the modules involved and the library versions: a second call with the same arguments copies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from recoverlib.cache import cache_root
from recoverlib.errors import RecoverlibError
from recoverlib.synthetic.generator import TaskConfig, generate, write_task
from recoverlib.tiny.model import TinySpec, save_model
from recoverlib.training.lora import TrainConfig, import_trl, train_adapter
from recoverlib.training.pretrain import PretrainConfig, new_model, pretrain, task_tokenizer

STAMP = "trained.json"


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter of the set: its priming opening, rank, seed offset and data subset size."""

    prime: str
    rank: int
    seed: int
    rows: int = 1500


ADAPTER_SPECS = (
    AdapterSpec(prime="Rewrite", rank=8, seed=1),
    AdapterSpec(prime="Make", rank=4, seed=2),
    AdapterSpec(prime="", rank=16, seed=3),
    AdapterSpec(prime="Turn", rank=2, seed=4),
)


@dataclass(frozen=True)
class TrainedTinyConfig:
    """What to train. Defaults fit ``make-tiny --trained --adapters 2`` in about 6 minutes on 2 CPU cores."""

    task: TaskConfig = field(default_factory=TaskConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    spec: TinySpec = field(default_factory=TinySpec)
    adapter_epochs: int = 1
    adapter_lr: float = 2e-3
    adapter_score_rows: int = 0  # per-epoch generation score while training adapters (0: loss only, faster)


def code_version() -> str:
    """Hash of the sources that decide the result, and of the library versions that run them."""
    import peft
    import torch
    import transformers

    trl = import_trl()

    root = Path(__file__).parent.parent
    files = sorted(
        [
            *root.glob("synthetic/*.py"),
            *(
                root / n
                for n in (
                    "training/pretrain.py",
                    "training/lora.py",
                    "prompt.py",
                    "tiny/model.py",
                    "tiny/trained.py",
                )
            ),
        ]
    )
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    for mod in (torch, transformers, peft, trl):
        h.update(f"{mod.__name__}={mod.__version__};".encode())
    return h.hexdigest()


def cache_key(adapters: int, seed: int, config: TrainedTinyConfig) -> str:
    payload = json.dumps(
        {"adapters": adapters, "seed": seed, "config": asdict(config), "code": code_version()},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def make_trained_tiny(
    out_dir: str | Path,
    adapters: int = 2,
    seed: int = 0,
    config: TrainedTinyConfig | None = None,
    cache: bool = True,
) -> Path:
    """Write a trained tiny model, ``adapters`` trained adapters and their task under ``out_dir``; return it.

    Deterministic for a given seed on a given machine. With ``cache`` a finished result is reused: from
    ``out_dir`` itself when its stamp matches, else copied from the cache.
    """
    config = config or TrainedTinyConfig()
    if not 0 <= adapters <= len(ADAPTER_SPECS):
        raise RecoverlibError(f"--adapters must be between 0 and {len(ADAPTER_SPECS)} (got {adapters})")
    out_dir, key = Path(out_dir), cache_key(adapters, seed, config)
    if cache and _stamp_key(out_dir) == key:
        return out_dir
    cached = cache_root() / f"trained-tiny-{key}"
    if not (cache and _stamp_key(cached) == key):
        build = cached.with_name(cached.name + f".tmp{os.getpid()}") if cache else out_dir
        shutil.rmtree(build, ignore_errors=True)
        _build(build, adapters, seed, config, key)
        if not cache:
            return out_dir
        shutil.rmtree(cached, ignore_errors=True)
        build.rename(cached)
    if out_dir.exists():
        for sub in ("model", "adapters", "task", STAMP):
            target = out_dir / sub
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    shutil.copytree(cached, out_dir, dirs_exist_ok=True)
    return out_dir


def _stamp_key(folder: Path) -> str | None:
    stamp = folder / STAMP
    return json.loads(stamp.read_text()).get("key") if stamp.is_file() else None


def _build(out: Path, adapters: int, seed: int, config: TrainedTinyConfig, key: str) -> None:
    from dataclasses import replace

    start = time.perf_counter()
    task = replace(config.task, seed=seed)
    bar = tqdm(total=2 + adapters, desc="make-tiny --trained", unit="stage")
    write_task(out / "task", task)
    rows = generate(task)
    bar.update(1)
    stats = _train_base(out / "model", rows["train"], rows["validation"], seed, config)
    base_seconds = time.perf_counter() - start
    bar.update(1)
    results = []
    for k in range(adapters):
        results.append(_train_one(out, k, rows, seed, config))
        bar.update(1)
    bar.close()
    info = {"key": key, "seed": seed, "adapters": adapters, "base_epochs": stats,
            "base_seconds": round(base_seconds, 1), "adapter_results": results,
            "seconds": round(time.perf_counter() - start, 1), "config": asdict(config)}
    (out / STAMP).write_text(json.dumps(info, indent=1, default=str) + "\n")


def _train_base(model_dir: Path, train_rows, val_rows, seed: int, config: TrainedTinyConfig) -> list[dict]:
    texts = [t for r in train_rows for t in (r.original_text, r.rewritten_text, r.rewrite_prompt)]
    tokenizer = task_tokenizer(texts, config.spec.vocab_size)
    model = new_model(tokenizer, config.spec, seed)
    pre = PretrainConfig(**{**asdict(config.pretrain), "seed": seed})
    stats = pretrain(model, tokenizer, train_rows, val_rows, pre)
    save_model(model, tokenizer, model_dir)
    return stats


def _train_one(out: Path, k: int, rows, seed: int, config: TrainedTinyConfig) -> dict:
    spec, name = ADAPTER_SPECS[k], f"tiny-{chr(ord('a') + k)}"
    tc = TrainConfig(rank=spec.rank, alpha=2.0 * spec.rank, prime=spec.prime, epochs=config.adapter_epochs,
                     lr=config.adapter_lr, max_rows=spec.rows, score_rows=config.adapter_score_rows,
                     seed=seed * 100 + spec.seed)
    # No base name: the folder moves (cache -> OUT), and PEFT would look a non-path name up on the Hub
    result = train_adapter(out / "model", rows["train"], out / "adapters" / name, rows["validation"], tc,
                           base_name="")
    return {"name": name, "prime": spec.prime, "rank": spec.rank, "best_epoch": result.best_epoch,
            "history": result.history, "train_rows": result.train_rows, "seconds": result.seconds}
