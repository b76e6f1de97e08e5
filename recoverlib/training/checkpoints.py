"""Resumable training: a checkpoint per epoch under the adapter folder, and the best-epoch selector's state
in it.

While ``train`` runs, ``OUT/.checkpoints/checkpoint-STEP/`` holds the Trainer's checkpoint of each finished
epoch (LoRA weights as safetensors, optimizer, scheduler and RNG states, written by the Trainer) plus
``recoverlib_selector.json`` (history, best epoch) and ``best.safetensors`` (the best epoch's LoRA weights so
far). The selector file is written last, so a checkpoint without it was cut short and is skipped on resume.
The folder is removed once the adapter is saved.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

CHECKPOINTS = ".checkpoints"
SELECTOR_FILE = "recoverlib_selector.json"
BEST_WEIGHTS = "best.safetensors"


def last_checkpoint(work: Path) -> Path | None:
    """The newest whole checkpoint under ``work`` (one holding the selector file), or None."""
    if not work.is_dir():
        return None
    steps = [
        p
        for p in work.glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit() and (p / SELECTOR_FILE).is_file()
    ]
    return max(steps, key=lambda p: int(p.name.split("-")[-1]), default=None)


def save_selector(folder: Path, selector) -> None:
    """Write ``selector``'s state into a checkpoint folder; the JSON last and atomically (it marks it
    whole)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if selector.best_state is not None:
        save_file({k: v.contiguous() for k, v in selector.best_state.items()}, str(folder / BEST_WEIGHTS))
    state = {"history": selector.history, "best_key": selector.best_key, "best_epoch": selector.best_epoch}
    tmp = folder / (SELECTOR_FILE + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, folder / SELECTOR_FILE)


def restore_selector(folder: Path, selector) -> None:
    """Put the state saved by :func:`save_selector` back into ``selector``."""
    from safetensors.torch import load_file

    state = json.loads((folder / SELECTOR_FILE).read_text())
    selector.history, selector.best_key, selector.best_epoch = (
        state["history"],
        state["best_key"],
        state["best_epoch"],
    )
    best = folder / BEST_WEIGHTS
    selector.best_state = load_file(str(best)) if best.is_file() else None


def checkpoint_callback(selector):
    """A TrainerCallback that writes the selector's state into each checkpoint the Trainer has just saved."""
    from transformers import TrainerCallback

    class SelectorCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            save_selector(Path(args.output_dir) / f"checkpoint-{state.global_step}", selector)

    return SelectorCheckpoint()
