"""An HF model folder: the one check that a path is one, and its ``config.json``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from recoverlib.errors import RecoverlibError


def require_model_folder(path: str | Path) -> Path:
    """``path`` as a Path if it is an HF model folder (has ``config.json``); else a one-line error."""
    path = Path(path)
    if not path.is_dir():
        raise RecoverlibError(f"model {path}: no such folder")
    if not (path / "config.json").is_file():
        raise RecoverlibError(f"model {path}: not an HF model folder (no config.json)")
    pickles = sorted(p.name for p in path.glob("*.bin") if p.name.startswith(("pytorch_model", "model")))
    if pickles and not any(path.glob("*.safetensors")):
        raise RecoverlibError(
            f"model {path}: holds only pickle weights ({pickles[0]}); recoverlib loads safetensors only, "
            "since loading"
            " a pickle can run code. Convert where you trust it: AutoModelForCausalLM.from_pretrained(path)"
            ".save_pretrained(new_path)"
        )
    return path


def read_model_config(path: str | Path) -> dict:
    """The ``config.json`` of an HF model folder as a dict; a missing or malformed one is a one-line error."""
    return read_json_object(require_model_folder(path) / "config.json")


def read_json_object(file: Path, label: str = "") -> dict:
    """A JSON file that must hold an object (a folder's config); malformed is one line, prefixed with
    ``label``."""
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecoverlibError(f"{label}{file} is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise RecoverlibError(f"{label}{file} is not a JSON object")
    return data


def read_config(config: str | Path | dict) -> dict:
    """A config dict from a dict, a ``config.json`` file or a model folder."""
    if isinstance(config, dict):
        return config
    path = Path(config)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise RecoverlibError(f"{path}: no such config file")
    return read_json_object(path)


def checkpoint_dtype(path: str | Path) -> str | None:
    """The dtype the checkpoint's weights are stored in (``dtype``, or ``torch_dtype`` before transformers
    5)."""
    cfg = read_model_config(path)
    return cfg.get("dtype") or cfg.get("torch_dtype")


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "tokenizer.model",
)


def copy_tokenizer(src: Path, dst: Path) -> None:
    """Copy the tokenizer and generation files a model folder needs besides weights and config."""
    import shutil

    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


_SAMPLE = 1 << 20
# What makes a model or adapter folder what it is: config, weights, tokenizer (and its chat template).
FOLDER_FILES = (".json", ".safetensors", ".jinja", ".model", ".txt")


def folder_fingerprint(folder: str | Path, full: bool = False,
                       suffixes: tuple[str, ...] = FOLDER_FILES) -> str:
    """sha256 over a folder's files with ``suffixes`` (top level).

    ``full``: every byte (adapters are small). Otherwise name, size, and the whole of files up to 3 MiB, 1 MiB
    samples at the start (a safetensors header), middle and end of larger ones, so a 90 GB base is
    fingerprinted in milliseconds.
    """
    h = hashlib.sha256()
    files = sorted(p for p in Path(folder).iterdir() if p.suffix in suffixes and p.is_file())
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.name}:{size}".encode())
        with open(p, "rb") as fh:
            if full or size <= 3 * _SAMPLE:
                h.update(fh.read())
                continue
            for offset in (0, size // 2, size - _SAMPLE):
                fh.seek(offset)
                h.update(fh.read(_SAMPLE))
    return h.hexdigest()
