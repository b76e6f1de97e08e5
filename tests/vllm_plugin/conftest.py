"""What the cure tests share: one greedy run of the tiny Mixtral through vLLM with a chosen set of cures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

GREEDY = """
import json, sys
from vllm import LLM, SamplingParams
llm = LLM(sys.argv[1], enforce_eager=True, seed=0, max_model_len=512, block_size=32, dtype="bfloat16")
prompts = [{"prompt_token_ids": [3 + (7 * i + 11 * j) % 2000 for j in range(20 + i)]} for i in range(16)]
outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8, logprobs=0), use_tqdm=False)
counts = {name: llm.apply_model(lambda m, f=eval(expr): sum(bool(f(mod)) for mod in m.modules()))[0]
          for name, expr in json.loads(sys.argv[2]).items()}
print(json.dumps({**counts, "tokens": [list(o.outputs[0].token_ids) for o in outs],
                  "first_logprob": [next(iter(o.outputs[0].logprobs[0].values())).logprob for o in outs]}))
"""


@pytest.fixture
def greedy():
    """``greedy(model, cures, counts)``: 16 prompts, 8 greedy tokens each, in a fresh process with only
    ``cures`` of the plugin; ``counts`` maps a name to a Python lambda over a module, and the result has, per
    name, how many of the engine's modules it is true for (beside ``tokens`` and ``first_logprob``)."""
    from recoverlib.vllm_plugin import DISABLE_ENV

    def run(model, cures: list[str], counts: dict[str, str]) -> dict:
        env = {**os.environ, DISABLE_ENV: ",".join(cures), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        res = subprocess.run([sys.executable, "-c", GREEDY, str(model), json.dumps(counts)],
                             capture_output=True, text=True, env=env, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        return json.loads(res.stdout.strip().splitlines()[-1])

    return run
