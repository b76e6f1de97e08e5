"""Importing GPTQModel leaves the process's Hugging Face cache settings as they were.

GPTQModel's tokenicer sets ``HF_HOME`` (and the hub, transformers and modules caches) to a temp folder for the
whole process when they are unset; every process started afterwards (a vLLM server, a Ray worker, which get
the driver's ``HF_*``) would look for models there. Run in a fresh interpreter: the import acts once.
"""

import json
import os
import subprocess
import sys

import pytest

from recoverlib.quant.backends.gptq import TOKENICER_CACHE_VARS

pytest.importorskip("gptqmodel", reason="GPTQModel is not installed")

CHECK = """
import json, os
from recoverlib.quant.backends.gptq import TOKENICER_CACHE_VARS, GptqBackend
from recoverlib.quant.plan import PRESETS
with GptqBackend().session(PRESETS["gptq-4"], "cpu"):  # imports gptqmodel
    pass
print(json.dumps({k: os.environ.get(k) for k in TOKENICER_CACHE_VARS}))
"""


@pytest.mark.slow
def test_the_caches_stay_where_the_user_had_them():
    env = {k: v for k, v in os.environ.items() if k not in TOKENICER_CACHE_VARS}
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    after = json.loads(out.stdout.strip().splitlines()[-1])
    assert after == dict.fromkeys(TOKENICER_CACHE_VARS), after
