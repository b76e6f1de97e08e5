"""The main job on the embedded default: tiny Mixtral + 2 LoRA adapters, vLLM, 4 samples per row, scored.

Run with ``make demo`` (or ``python examples/demo.py [--out DIR]``). The tiny model is made once and cached
under ``.cache/``; the submission lands in ``out/demo/submission.csv``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from recoverlib.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data"


def tiny_model(cache: Path, adapters: int = 2, seed: int = 0) -> Path:
    """The cached tiny model folder, made on first use."""
    meta = cache / "tiny.json"
    if not (meta.is_file() and json.loads(meta.read_text()).get("adapters") == adapters):
        cli(["make-tiny", str(cache), "--adapters", str(adapters), "--seed", str(seed)])
    return cache


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "demo")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "tiny")
    args = ap.parse_args()
    start = time.perf_counter()
    tiny = tiny_model(args.cache)
    submission = args.out / "submission.csv"
    adapters = [f"--adapter={p.name}={p}" for p in sorted((tiny / "adapters").iterdir())]
    rc = cli(["predict", "--model", str(tiny / "model"), *adapters, "--samples", "4", "--engine", "vllm",
              "--input", str(DATA / "sample.csv"), "--output", str(submission),
              "--save-samples", str(args.out / "samples.jsonl")])
    rc = rc or cli(["score", "--predictions", str(submission), "--truth", str(DATA / "sample_truth.csv"),
                    "--embedder", "minilm"])
    print(f"submission: {submission}\ndemo wall time: {time.perf_counter() - start:.1f} s")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
