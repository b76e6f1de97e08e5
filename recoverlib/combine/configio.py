"""Combination configs as JSON: what ``tune`` writes and ``combine`` / ``predict --combination`` read.

Format (one JSON object; ``info`` is free-form and ignored when loading)::

    {
      "format": "recoverlib-combination/1",
      "combination": {"strategy": "pipeline", "steps": [
          {"strategy": "mbr", "max_parts": 4, "dedup_threshold": 0.95, "prior_weight": 0.0, "separator": " ",
           "mean_prompt": {"strategy": "mean-prompt", "text": "Rewrite this text ...", "path": null,
                           "mode": "insert", "k": 3, "only_new_words": true}},
          {"strategy": "suffix", "text": "lucrarea", "path": null, "repeat": 4},
          {"strategy": "budget", "max_tokens": null}]},
      "info": {"tuned_on": "val_samples.jsonl", "embedder": "minilm", "score": 0.61}
    }

Every config is an object with a ``"strategy"`` tag (``concat``, ``first``, ``medoid``, ``mean-prompt``,
``suffix``, ``budget``, ``mbr``, ``pipeline``) and that strategy's fields (see each ``*Config`` class); a
missing field takes its default. A bare config object (no ``format`` wrapper) is accepted too. A relative
``path`` (mean prompt or suffix file) is read relative to the JSON file's folder. ``tune`` writes texts
inline, so a tuned file carries to another split or machine on its own.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

from recoverlib.combine.base import strategy_for, strategy_named
from recoverlib.errors import RecoverlibError

FORMAT = "recoverlib-combination/1"


def config_to_dict(config) -> dict:
    """A JSON-ready dict of ``config``, nested configs and step lists included."""
    out: dict = {"strategy": strategy_for(config).name}
    for f in fields(config):
        if f.init:
            out[f.name] = _encode(getattr(config, f.name))
    return out


def _encode(value):
    if is_dataclass(value):
        return config_to_dict(value)
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    return value


def _type_ok(value, hint) -> bool:
    """A small checker for the types configs use: scalars, ``X | None``, tuples, nested configs."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is tuple or origin is tuple:
        return isinstance(value, tuple)
    return isinstance(value, hint) if isinstance(hint, type) else True


def config_from_dict(data, base_dir: Path | None = None, where: str = "combination"):
    """The config object ``data`` describes; every problem is a one-line :class:`RecoverlibError`."""
    if not isinstance(data, dict) or not isinstance(data.get("strategy"), str):
        raise RecoverlibError(
            f'{where}: expected an object with a "strategy" name, got {json.dumps(data)[:80]}'
        )
    cls = strategy_named(data["strategy"]).config_type
    known = {f.name: f for f in fields(cls) if f.init}
    extra = sorted(set(data) - set(known) - {"strategy"})
    if extra:
        raise RecoverlibError(f"{where}: unknown field(s) {', '.join(extra)} for {data['strategy']!r}; "
                              f"known: {', '.join(known) or 'none'}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, raw in data.items():
        if name == "strategy":
            continue
        value = _decode(raw, base_dir, f"{where}.{name}")
        if (
            name == "path"
            and isinstance(value, str)
            and base_dir is not None
            and not Path(value).is_absolute()
        ):
            value = str(base_dir / value)
        if not _type_ok(value, hints[name]):
            raise RecoverlibError(
                f"{where}.{name}: {json.dumps(raw)[:60]} is not a valid {data['strategy']} {name}"
            )
        kwargs[name] = value
    return cls(**kwargs)


def _decode(raw, base_dir, where):
    if isinstance(raw, dict):
        return config_from_dict(raw, base_dir, where)
    if isinstance(raw, list):
        return tuple(_decode(v, base_dir, f"{where}[{i}]") for i, v in enumerate(raw))
    return raw


def save_combination(config, path: str | Path, info: dict | None = None) -> Path:
    """Write ``config`` (and free-form ``info``) as a combination file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "combination": config_to_dict(config), "info": info or {}}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)  # a finished-looking file is always whole
    return path


def load_combination(path: str | Path):
    """The config object of a combination file (see the module doc); bad files give one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise RecoverlibError(f"{path}: no such combination file")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecoverlibError(f"{path}: not JSON ({err})") from None
    if isinstance(doc, dict) and "format" in doc:
        if doc["format"] != FORMAT:
            raise RecoverlibError(f"{path}: format {doc['format']!r} is not {FORMAT!r}")
        doc = doc.get("combination")
    return config_from_dict(doc, path.parent, where=str(path))
