"""An HF model folder: the one check that a path is one, and its ``config.json``."""

from __future__ import annotations

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
            f"model {path}: holds only pickle weights ({pickles[0]}); recoverlib loads safetensors only, since loading"
            " a pickle can run code. Convert where you trust it: AutoModelForCausalLM.from_pretrained(path)"
            ".save_pretrained(new_path)"
        )
    return path


def read_model_config(path: str | Path) -> dict:
    """The ``config.json`` of an HF model folder as a dict; a missing or malformed one is a one-line error."""
    return read_json_object(require_model_folder(path) / "config.json")


def read_json_object(file: Path, label: str = "") -> dict:
    """A JSON file that must hold an object (a folder's config); malformed is one line, prefixed with ``label``."""
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecoverlibError(f"{label}{file} is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise RecoverlibError(f"{label}{file} is not a JSON object")
    return data


def checkpoint_dtype(path: str | Path) -> str | None:
    """The dtype the checkpoint's weights are stored in (``dtype``, or ``torch_dtype`` before transformers 5)."""
    cfg = read_model_config(path)
    return cfg.get("dtype") or cfg.get("torch_dtype")
