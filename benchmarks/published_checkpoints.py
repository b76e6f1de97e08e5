"""Published quantized checkpoints written by the libraries that write them, cached on disk.

Each set is made once per machine under ``$RECOVERLIB_CACHE/published-fixtures/<key>`` (key: the source
model's bytes, the writer's spec and the library versions), in a process of its own:

- GPTQ by GPTQModel (``write_gptq.py``): act-order at every group size, 3/4/8 bits, sym true/false, static
  groups, attention-only, a dense Mistral; the published expert names made from GPTQModel's output by
  ``recoverlib convert``'s renaming, AutoGPTQ's ``quantize_config.json``-only layout by dropping the copy
  GPTQModel also writes into ``config.json``.
- compressed-tensors W4A16 by llm-compressor (``oneshot`` with a W4A16 ``QuantizationModifier``), in an
  environment of its own: llm-compressor 0.14 pins transformers<=5.17 and compressed-tensors 0.19, ours are
  5.19 and 0.17. Built once with ``pip install --target`` (a few packages, the rest from ours; about a
  minute), keyed by the versions; skipped with the reason when PyPI cannot be reached.
- bitsandbytes by transformers' own ``save_pretrained`` of a ``BitsAndBytesConfig`` model.

Not written here: AutoAWQ's GEMM format (GPTQModel 7.6 packs AWQ only on CUDA: "AWQ: CUDA is not
available"; AutoAWQ itself is archived and needs CUDA and transformers 4) and HQQ as transformers saves it
(transformers 5.19 cannot quantize with HQQ).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from recoverlib.cache import cache_dir

HERE = Path(__file__).resolve().parent
# llm-compressor's environment: these beside ours (its pins conflict with our transformers 5.19 and
# compressed-tensors 0.17; datasets and huggingface-hub follow transformers 5.17's huggingface-hub<2)
LLMCOMPRESSOR_ENV = ("llmcompressor==0.14.0.1", "transformers==5.17.0", "compressed-tensors==0.19.0",
                     "auto-round==0.15.1", "huggingface-hub==1.14.0", "datasets==4.8.4", "loguru==0.7.3",
                     "nvidia-ml-py==13.615.71")
CT_SCRIPT = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier
src, out, experts = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
ignore = ["lm_head", "re:.*mlp.gate$"] + ([] if experts else ["re:.*experts.*"])
oneshot(model=model, recipe=QuantizationModifier(targets="Linear", scheme="W4A16", ignore=ignore))
model.save_pretrained(out, save_compressed=True)
AutoTokenizer.from_pretrained(src).save_pretrained(out)
"""
G32 = {"bits": 4, "group_size": 32, "desc_act": True, "sym": True}
GPTQ_SPECS = {  # name -> GPTQModel QuantizeConfig arguments (experts False: a dynamic rule keeps them 16-bit)
    "act-g32": G32,
    "act-g-1": {**G32, "group_size": -1},
    "act-g64": {**G32, "group_size": 64},
    "act-g128": {**G32, "group_size": 128},
    "act-3bit": {**G32, "bits": 3},
    "act-8bit": {**G32, "bits": 8},
    "act-asym": {**G32, "sym": False},
    "static-g32": {**G32, "static_groups": True},
    "attn-g32": {**G32, "desc_act": False, "experts": False},
    "attn-act-g32": {**G32, "experts": False},
    "attn-static-g32": {**G32, "static_groups": True, "experts": False},
}


def versions(*names: str) -> str:
    from importlib.metadata import version

    return "-".join(f"{n}{version(n)}" for n in names)


def folder_key(*parts) -> str:
    """A short hash of the given strings and files' bytes."""
    h = hashlib.sha256()
    for p in parts:
        h.update(Path(p).read_bytes() if isinstance(p, Path) else str(p).encode())
    return h.hexdigest()[:16]


def calibration(model: Path, n: int = 32) -> list[str]:
    from recoverlib.quant.calibration import calibration_texts

    return list(calibration_texts(None, model, 0, "auto"))[:n]


def gptq_set(model: Path, specs: dict[str, dict], tag: str) -> Path:
    """GPTQModel's checkpoints of ``model`` for ``specs`` under one cached folder (``<folder>/<name>``)."""
    key = folder_key(model / "model.safetensors", json.dumps(specs, sort_keys=True),
                     versions("gptqmodel", "transformers", "torch"))
    root = cache_dir("published-fixtures", f"{tag}-gptq-{key}")
    if all((root / name / "config.json").is_file() for name in specs):
        return root
    root.mkdir(parents=True, exist_ok=True)
    spec = {"source": str(model), "texts": calibration(model),
            "out": {str(root / name): args for name, args in specs.items()}}
    (root / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "GPTQMODEL_CPU_WORKERS": str(os.cpu_count() or 1),
           "HF_HOME": os.environ.get("HF_HOME") or str(root / "hf_home")}
    res = subprocess.run([sys.executable, str(HERE / "write_gptq.py"), str(root / "spec.json")], cwd=root,
                         capture_output=True, text=True, env=env, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    shutil.rmtree(root / "logs", ignore_errors=True)
    return root


def published_names(split: Path, out: Path) -> Path:
    """GPTQModel's checkpoint renamed into Mixtral's published expert names (recoverlib's own renaming)."""
    from recoverlib.quant.checkpoint import disk_name, rewrite_names

    if not (out / "config.json").is_file():
        rewrite_names(split, out, disk_name)
    return out


def autogptq_layout(src: Path, out: Path) -> Path:
    """The same checkpoint as AutoGPTQ published them: the config in ``quantize_config.json`` only."""
    if not (out / "config.json").is_file():
        shutil.copytree(src, out)
        cfg = json.loads((out / "config.json").read_text())
        cfg.pop("quantization_config")
        (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def tiny_mistral(tiny_mixtral: Path, out: Path) -> Path:
    """A dense Mistral with the tiny Mixtral's shapes and tokenizer, seeded weights (transformers' own
    save)."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    src = json.loads((tiny_mixtral / "config.json").read_text())
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "rope_theta", "bos_token_id",
            "eos_token_id", "pad_token_id", "tie_word_embeddings")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MistralForCausalLM(MistralConfig(**{k: src[k] for k in keep if k in src}))
    model.to(torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_mixtral).save_pretrained(out)
    return out


def bnb_checkpoint(model: Path, out: Path) -> Path:
    """transformers' own ``save_pretrained`` of the model loaded in 4-bit NF4 by bitsandbytes."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                             bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=["gate", "lm_head"])
    loaded = AutoModelForCausalLM.from_pretrained(model, quantization_config=cfg, dtype=torch.bfloat16)
    loaded.save_pretrained(out)
    AutoTokenizer.from_pretrained(model).save_pretrained(out)
    return out


def llmcompressor_env() -> Path:
    """llm-compressor's packages in a folder of their own (``pip install --no-deps --target``), built once.
    Raises ``RuntimeError`` naming pip's last line when it cannot be built (no PyPI)."""
    key = folder_key(*LLMCOMPRESSOR_ENV, sys.version_info[:2])
    target = cache_dir("fixture-envs", f"llmcompressor-{key}")
    if (target / ".complete").is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                          str(target), *LLMCOMPRESSOR_ENV], capture_output=True, text=True, timeout=900)
    if res.returncode:
        shutil.rmtree(target, ignore_errors=True)
        last = res.stderr.strip().splitlines()[-1:]
        raise RuntimeError(f"llm-compressor's environment: pip failed ({last})")
    (target / ".complete").write_text("\n".join(LLMCOMPRESSOR_ENV))
    return target


def compressed_tensors(model: Path, out: Path, experts: bool) -> Path:
    """llm-compressor's W4A16 (round to nearest, group 128, symmetric) of ``model``, saved compressed
    (``pack-quantized``); ``experts=False`` keeps the MoE experts 16-bit."""
    if (out / "config.json").is_file():
        return out
    import site

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(llmcompressor_env()), *site.getsitepackages()]),
           "PYTHONNOUSERSITE": "1"}
    tmp = out.with_name(out.name + ".tmp")
    argv = [sys.executable, "-s", "-c", CT_SCRIPT, str(model), str(tmp), "1" if experts else "0"]
    res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    os.replace(tmp, out)
    return out
