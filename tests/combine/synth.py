"""Constructed samples files: rows whose truth is one wording of a family, sampled by noisy "adapters".

``agree`` is the chance a sample names the true family; the rest name a random other family. Low ``agree`` is
an ambiguous task (hedging should pay), high ``agree`` a clear one (a single answer should win).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

FAMILIES = [
    ["Rewrite this text as a pirate would say it.", "Make it sound like a pirate.", "Pirate speak, please."],
    ["Make the text shorter.", "Shorten this text.", "Condense the text into fewer words."],
    ["Turn this into a poem.", "Rewrite the text as a rhyming poem.", "Make it a short poem."],
    ["Make the text more formal.", "Rewrite this in a formal business tone.", "Use formal language."],
    ["Write this as a news headline.", "Turn the text into a newspaper report.", "Make it a news story."],
    ["Explain this to a five year old.", "Rewrite it simply for a child.", "Use words a child understands."],
    ["Add humour to the text.", "Make this text funny.", "Rewrite it as a joke."],
    ["Rewrite this as a recipe.", "Turn the text into cooking instructions.", "Make it a recipe card."],
]


def make_split(samples_path: Path, truth_path: Path, rows: int, per_adapter: int = 2, adapters=("a", "b"),
               agree: float = 0.7, seed: int = 0, prefix: str = "r") -> None:
    """Write a samples JSONL and a truth CSV of ``rows`` constructed rows."""
    rng = np.random.default_rng(seed)
    ids, truths = [], []
    with open(samples_path, "w") as fh:
        for r in range(rows):
            fam = int(rng.integers(len(FAMILIES)))
            ids.append(f"{prefix}{r}")
            truths.append(FAMILIES[fam][int(rng.integers(3))])
            samples = []
            for a in adapters:
                for k in range(per_adapter):
                    f = fam if rng.random() < agree else int(rng.integers(len(FAMILIES)))
                    samples.append({"adapter": a, "index": k, "text": FAMILIES[f][int(rng.integers(3))]})
            fh.write(json.dumps({"id": ids[-1], "samples": samples}) + "\n")
    pd.DataFrame({"id": ids, "rewrite_prompt": truths}).to_csv(truth_path, index=False)
