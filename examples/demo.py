"""The main job on the embedded default: a tiny Mixtral trained here on the synthetic recovery task, two LoRA
adapters, vLLM, 4 samples per row and adapter, combined by minimum Bayes risk under the metric and scored,
beside the best constant prompt.

Run with ``make demo`` (or ``python examples/demo.py``). The trained model is made once (minutes) and cached;
the submission lands in ``out/demo/submission.csv``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from recoverlib.cache import cache_dir
from recoverlib.cli import main as cli
from recoverlib.runtime import relaunch_with_allocator, uses_cpu_vllm

ROOT = Path(__file__).resolve().parent.parent


def constant_baseline(task: Path) -> tuple[str, float]:
    """The best single prompt for every row, chosen on train, scored on the test truths."""
    from recoverlib.io import read_truth
    from recoverlib.metric import Scorer
    from recoverlib.training.evaluate import best_constant_prompt

    scorer = Scorer("minilm", progress=False)
    train = read_truth(task / "train.csv")
    prompt, _ = best_constant_prompt(list(train.values()), scorer=scorer)
    truths = list(read_truth(task / "test_truth.csv").values())
    return prompt, scorer.score([prompt] * len(truths), truths)


def main() -> int:
    if uses_cpu_vllm():  # vLLM's CPU build runs with tcmalloc and libiomp5, as the recoverlib command does
        relaunch_with_allocator([sys.executable, os.path.abspath(__file__), *sys.argv[1:]])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "demo")
    ap.add_argument(
        "--model-dir",
        type=Path,
        default=cache_dir("demo-trained-tiny"),
        help="where the trained tiny model is put (trained once per machine, in the recoverlib cache)",
    )
    args = ap.parse_args()
    start = time.perf_counter()
    rc = cli(["make-tiny", "--out", str(args.model_dir), "--trained", "--adapters", "2"])
    tiny, task = args.model_dir, args.model_dir / "task"
    submission = args.out / "submission.csv"
    adapters = [f"--adapter={p.name}={p}" for p in sorted((tiny / "adapters").iterdir())]
    samples = args.out / "samples.jsonl"
    samples.unlink(missing_ok=True)  # each demo samples afresh (predict refuses to overwrite a samples file)
    rc = rc or cli(
        [
            "predict",
            "--model",
            str(tiny / "model"),
            *adapters,
            "--samples",
            "4",
            "--engine",
            "vllm",
            "--input",
            str(task / "test.csv"),
            "--out",
            str(submission),
            "--samples-file",
            str(samples),
            "--embedder",
            "minilm",
            "--combination",
            str(ROOT / "examples" / "combination" / "mbr.json"),
        ]
    )
    rc = rc or cli(["score", "--predictions", str(submission), "--truth", str(task / "test_truth.csv"),
                    "--embedder", "minilm"])
    if rc == 0:
        prompt, score = constant_baseline(task)
        print(f"best constant prompt {prompt!r}: score {score:.4f} (the baseline to beat)")
        print(f"submission: {submission}")
    print(f"demo wall time: {time.perf_counter() - start:.1f} s")
    return rc


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # no interpreter teardown: its ~2 s and the libraries' exit chatter (triton's nanobind leaks)
    os._exit(code)
