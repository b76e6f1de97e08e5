"""Write GPTQ checkpoints with GPTQModel itself, as a user publishing one would (run as a script, in its own
process: GPTQModel patches transformers on import).

    python write_gptq.py SPECS.json

SPECS.json: ``{"source": MODEL, "texts": [...], "out": {name: {"bits": 4, "group_size": 32, "desc_act": true,
"sym": true, "static_groups": false, "act_group_aware": null, "experts": true}}}``; each checkpoint is saved
to ``name`` (a folder), unless it is there already. ``experts: false`` keeps the MoE experts 16-bit (a
``dynamic`` skip rule, as published attention-only checkpoints do).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig

    for out, args in spec["out"].items():
        if os.path.isfile(os.path.join(out, "config.json")):
            continue
        start = time.perf_counter()
        args = dict(args)
        experts = args.pop("experts", True)
        if args.get("act_group_aware") is None:
            args.pop("act_group_aware", None)
        cfg = QuantizeConfig(**args, dynamic=None if experts else {r"-:.*\.experts\..*": {}})
        model = GPTQModel.load(spec["source"], cfg, dtype=torch.bfloat16)
        torch.manual_seed(0)
        model.quantize(spec["texts"], batch_size=8)
        model.save(out + ".tmp")
        os.replace(out + ".tmp", out)
        print(f"wrote {out} in {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
