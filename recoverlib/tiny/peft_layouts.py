"""LoRA adapters for the tiny Mixtral in every layout PEFT has written for Mixtral, each made by the library
that writes it (never by hand-writing what we think the format is).

- ``published`` (transformers 4 + PEFT: ``block_sparse_moe.experts.E.w1``, router ``block_sparse_moe.gate``):
  transformers 4 cannot live beside our transformers 5, so it runs in an environment of its own, built once
  per machine with ``pip install --target`` (:data:`TF4_PINS`: two pure-Python wheels, tokenizers and
  huggingface_hub, seconds) under ``<cache>/fixture-envs/tf4-<versions>``, in a subprocess whose
  ``PYTHONPATH`` puts it ahead of our site-packages (torch and safetensors come from ours; packages whose pins
  conflict with transformers 4, GPTQModel among them, are hidden from it). Our published-layout checkpoint
  loads in transformers 4 as it is.
- ``fused`` (transformers 5 + PEFT ``target_parameters`` on ``mlp.experts.gate_up_proj/down_proj``),
  ``linear`` (attention only) and ``dora``: this environment's transformers 5 and PEFT; ``split``: the same on
  the model built with one ``nn.Linear`` per expert (:func:`recoverlib.quant.moe.split_moe`, as defuser and
  GPTQModel build it).

Every LoRA tensor (A and B: PEFT starts B at zero, a no-op adapter) is drawn from a seeded N(0, sigma^2).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from recoverlib.cache import cache_dir
from recoverlib.errors import RecoverlibError
from recoverlib.quant.moe import split_moe

TF4_PINS = ("transformers==4.57.6", "peft==0.17.1", "tokenizers==0.22.1", "huggingface_hub==0.36.0")
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
# What each fixture layout targets: (target_modules, target_parameters)
LAYOUT_TARGETS = {
    "linear": (ATTENTION, ()),
    "published": ((*ATTENTION, "w1", "w2", "w3", "gate"), ()),
    "fused": (ATTENTION, ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")),
    "split": ((*ATTENTION, "gate_proj", "up_proj", "down_proj", "gate"), ()),
    "dora": (ATTENTION, ()),
}
# Importable beside our transformers 5 but broken under transformers 4; PEFT probes some of them (GPTQModel's
# import fails on transformers 4), so the transformers-4 process must not see them.
HIDDEN_IN_TF4 = ("gptqmodel", "auto_gptq", "bitsandbytes", "hqq", "awq", "eetq", "torchao", "aqlm", "optimum",
                 "vllm", "trl", "defuser", "deepspeed")

# Run in the transformers-4 environment: argv = base, json([job, ...]), json(hidden modules); a job is
# {"out", "targets", "rank", "alpha", "sigma", "seed"}. One process for several adapters: imports cost most.
TF4_SCRIPT = """
import json, sys
for name in json.loads(sys.argv[3]):
    sys.modules[name] = None  # import fails, importlib.util.find_spec says absent
import torch, transformers, peft
if not transformers.__version__.startswith("4."):
    raise SystemExit(f"transformers {transformers.__version__} imported, not 4.x: the environment is broken")
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
for job in json.loads(sys.argv[2]):
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32)
    cfg = LoraConfig(r=job["rank"], lora_alpha=job["alpha"], target_modules=job["targets"], lora_dropout=0.0)
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(job["seed"])
    with torch.no_grad():
        for name, p in sorted(peft_model.named_parameters()):
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * job["sigma"])
    peft_model.peft_config["default"].base_model_name_or_path = ""
    peft_model.save_pretrained(job["out"], safe_serialization=True)
print("versions", transformers.__version__, peft.__version__)
"""


def tf4_env(root: Path | None = None, timeout: float = 600) -> Path:
    """The transformers-4 environment (a ``pip --target`` folder), built on first use; a one-line error
    naming pip's complaint when it cannot be built (no package index reachable)."""
    python = f"py{sys.version_info.major}{sys.version_info.minor}"  # tokenizers is a compiled wheel
    key = "-".join([python, *(pin.replace("==", "") for pin in TF4_PINS)])
    folder = (Path(root) if root else cache_dir("fixture-envs")) / f"tf4-{key}"
    if (folder / ".complete").is_file():
        return folder
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--target", str(tmp), *TF4_PINS]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RecoverlibError(f"building the transformers-4 environment took over {timeout:.0f} s") from None
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RecoverlibError(f"cannot build the transformers-4 environment ({' '.join(TF4_PINS)}): {last}")
    (tmp / ".complete").write_text(json.dumps(TF4_PINS))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def make_tf4_adapters(base: Path, jobs: list[dict], env: Path | None = None) -> list[Path]:
    """PEFT adapters written by transformers 4 + PEFT (the published per-expert layout for experts), one
    process for all ``jobs`` (dicts of ``out``, ``targets`` and optionally ``rank``, ``alpha``, ``sigma``,
    ``seed``)."""
    env = env or tf4_env()
    full = [{"rank": 8, "alpha": 16, "sigma": 0.1, "seed": 0, **job, "out": str(job["out"]),
             "targets": list(job["targets"])} for job in jobs]
    run_env = {**os.environ, "PYTHONPATH": str(env), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    cmd = [sys.executable, "-s", "-c", TF4_SCRIPT, str(base), json.dumps(full), json.dumps(HIDDEN_IN_TF4)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=run_env, timeout=900)
    outs = [Path(job["out"]) for job in full]
    if done.returncode != 0 or not all((out / "adapter_model.safetensors").is_file() for out in outs):
        raise RecoverlibError(
            f"transformers 4 + PEFT could not write the adapters: {done.stderr.strip()[-600:]}"
        )
    return outs


def make_tf4_adapter(base: Path, out: Path, targets, rank: int = 8, alpha: float = 16, sigma: float = 0.1,
                     seed: int = 0, env: Path | None = None) -> Path:
    """One adapter written by transformers 4 + PEFT (see :func:`make_tf4_adapters`)."""
    job = {"out": out, "targets": targets, "rank": rank, "alpha": alpha, "sigma": sigma, "seed": seed}
    return make_tf4_adapters(base, [job], env)[0]


def make_tf5_adapter(base: Path, out: Path, targets=ATTENTION, parameters=(), rank: int = 8,
                     alpha: float = 16, sigma: float = 0.1, seed: int = 0, dora: bool = False,
                     split: bool = False) -> Path:
    """A PEFT adapter written by this environment's transformers 5 + PEFT (``parameters``: LoRA on the fused
    expert parameters, PEFT's ``target_parameters``; ``split``: on one ``nn.Linear`` per expert)."""
    from contextlib import nullcontext

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with split_moe() if split else nullcontext():
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets),
                     target_parameters=list(parameters) or None, lora_dropout=0.0, use_dora=dora)
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(peft_model.named_parameters()):
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * sigma)
    peft_model.peft_config["default"].base_model_name_or_path = ""  # no Hub look-up while saving
    peft_model.save_pretrained(out, safe_serialization=True)
    return Path(out)


def make_layout_adapter(base: Path, out: Path, layout: str, rank: int = 8, alpha: float = 16,
                        sigma: float = 0.1, seed: int = 0) -> Path:
    """One adapter on ``base`` in ``layout`` (see :data:`LAYOUT_TARGETS`), by the library that writes it."""
    if layout not in LAYOUT_TARGETS:
        raise RecoverlibError(f"layout {layout!r}: choose one of {', '.join(LAYOUT_TARGETS)}")
    modules, params = LAYOUT_TARGETS[layout]
    if layout == "published":
        return make_tf4_adapter(base, out, modules, rank, alpha, sigma, seed)
    return make_tf5_adapter(base, out, modules, params, rank, alpha, sigma, seed, dora=layout == "dora",
                            split=layout == "split")
