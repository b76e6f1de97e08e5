"""The synthetic prompt-recovery task: seeded Kaggle-shaped rows and the files ``make-task`` writes.

Layout of a task folder (same config, same bytes)::

    train.csv, validation.csv   id, original_text, rewritten_text, rewrite_prompt
    test.csv                    id, original_text, rewritten_text
    test_truth.csv              id, rewrite_prompt
    task.json                   the TaskConfig that made it

Every original text occurs in exactly one row, so the splits share no original text.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from recoverlib.errors import RecoverlibError
from recoverlib.synthetic.families import Family, transforms
from recoverlib.synthetic.texts import unique_texts

SPLITS = ("train", "validation", "test")
COLUMNS = ("id", "original_text", "rewritten_text", "rewrite_prompt")


@dataclass(frozen=True)
class TaskConfig:
    """How many rows, how ambiguous, which seed.

    ``ambiguity`` in [0, 1]: the weight of each alias family relative to its group's primary family. 0 uses
    primary families only (a rewrite determines the instruction up to wording); 1 makes all families of a
    group equally likely.
    """

    rows: int = 6000  # train rows
    eval_rows: int = 300  # validation rows, and test rows
    ambiguity: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.rows < 1 or self.eval_rows < 1:
            raise RecoverlibError(f"rows and eval_rows must be >= 1 (got {self.rows}, {self.eval_rows})")
        if not 0.0 <= self.ambiguity <= 1.0:
            raise RecoverlibError(f"ambiguity must be between 0 and 1 (got {self.ambiguity})")

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.rows, "validation": self.eval_rows, "test": self.eval_rows}


@dataclass(frozen=True)
class TaskRow:
    id: str
    original_text: str
    rewritten_text: str
    rewrite_prompt: str
    family: str


def pick_family(rng: random.Random, ambiguity: float) -> Family:
    """A transform uniformly, then a family of its group: primary weight 1, each alias ``ambiguity``."""
    groups = transforms()
    members = groups[rng.choice(sorted(groups))]
    weights = [1.0] + [ambiguity] * (len(members) - 1)
    return rng.choices(members, weights=weights)[0]


def make_row(rng: random.Random, row_id: str, text: str, ambiguity: float) -> TaskRow:
    """One row for ``text``: a family, a wording and the family's parameters, all drawn from ``rng``."""
    fam = pick_family(rng, ambiguity)
    params = fam.params(rng, text)
    prompt = rng.choice(fam.wordings).format(**params)
    return TaskRow(row_id, text, fam.rewrite(text, params), prompt, fam.name)


def generate(config: TaskConfig | None = None) -> dict[str, list[TaskRow]]:
    """Rows per split (``train``, ``validation``, ``test``); deterministic for a given config."""
    config = config or TaskConfig()
    sizes = config.split_sizes()
    rng = random.Random(config.seed)
    texts = unique_texts(random.Random(rng.getrandbits(64)), sum(sizes.values()))
    out: dict[str, list[TaskRow]] = {}
    for split in SPLITS:
        out[split] = [
            make_row(rng, f"{split}-{i:06d}", next(texts), config.ambiguity) for i in range(sizes[split])
        ]
    return out


def _write_csv(path: Path, rows: list[TaskRow], columns: tuple[str, ...]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([getattr(row, c) for c in columns])


def write_task(out_dir: str | Path, config: TaskConfig | None = None) -> Path:
    """Write the task folder (see module docstring) and return it."""
    config = config or TaskConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = generate(config)
    _write_csv(out_dir / "train.csv", rows["train"], COLUMNS)
    _write_csv(out_dir / "validation.csv", rows["validation"], COLUMNS)
    _write_csv(out_dir / "test.csv", rows["test"], COLUMNS[:3])
    _write_csv(out_dir / "test_truth.csv", rows["test"], ("id", "rewrite_prompt"))
    (out_dir / "task.json").write_text(json.dumps(asdict(config), indent=1) + "\n")
    return out_dir
