"""Every quantization preset on the tiny Mixtral: audited bits and bytes, planner bytes, reload exactness,
logits error and router agreement against the bf16 model. Writes a markdown table.

    PYTHONPATH=. python benchmarks/quant_tiny.py --out benchmarks/results/quant_tiny.md [--presets bnb-nf4 hqq-4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def input_ids(vocab: int, seed: int = 0, batch: int = 4, seq: int = 64):
    import torch

    return torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def run(preset: str, base: Path, work: Path, ref, ids) -> dict:
    import torch

    from recoverlib.quant.api import load_quantized, quantize_model, save_quantized
    from recoverlib.quant.compare import logits_error, router_agreement

    t = time.time()
    model, report = quantize_model(base, preset, seed=0)
    seconds = time.time() - t
    out = save_quantized(model, report, base, work / preset)
    reloaded = load_quantized(out)
    with torch.no_grad():
        same = torch.equal(model(ids).logits, reloaded(ids).logits)
    err = logits_error(ref, reloaded, ids)
    routing = router_agreement(ref, reloaded, ids)
    return {"preset": preset, "bits": report.effective_bits, "bytes": report.total_bytes,
            "planned": report.planned_bytes, "reload_exact": same, "seconds": seconds, **err,
            "router": routing["mean"], "router_exact": routing["exact"]}


def table(rows: list[dict]) -> str:
    head = ("| preset | bits/param | bytes | planner bytes | reload exact | rel. logits error | KL | top-1 | "
            "router top-2 agreement | quantize s |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['bits']:.3f} | {r['bytes']:,} | {r['planned']:,} | {r['reload_exact']} | "
                     f"{r['rel_error']:.4f} | {r['kl']:.5f} | {r['top1']:.3f} | {r['router']:.3f} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from recoverlib.quant.plan import PRESETS
    from recoverlib.tiny import make_tiny

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--presets", nargs="*", default=list(PRESETS))
    args = ap.parse_args()
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = make_tiny(work / "tiny", adapters=0, seed=0) / "model"
        ref = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).eval()
        ids = input_ids(ref.config.vocab_size)
        fp32 = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        rows = [{"preset": "bf16 (vs fp32)", "bits": 16.0, "bytes": 0, "planned": 0, "reload_exact": True,
                 "seconds": 0.0, **__import__("recoverlib.quant.compare", fromlist=["x"]).logits_error(fp32, ref, ids),
                 "router": 1.0, "router_exact": 1.0}]
        for preset in args.presets:
            rows.append(run(preset, base, work, ref, ids))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("Tiny Mixtral (hidden 128, 2 layers, 4 experts top-2), 4 x 64 random tokens; errors vs the "
                            "bf16 model.\n\n" + text + "\n")


if __name__ == "__main__":
    main()
