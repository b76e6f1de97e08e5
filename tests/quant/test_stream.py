"""Streaming quantization on a small multi-layer Mixtral: the same tensors as each library's own whole-model
path (tests/quant/reference.py), sharded output, one piece in memory at a time, one-line errors for broken
inputs, resume after a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest

from recoverlib.errors import RecoverlibError

from .reference import tensors, whole_model_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _spec(layers: int, **kw):
    from recoverlib.tiny import TinySpec

    return TinySpec(num_hidden_layers=layers, **kw)


@pytest.fixture(scope="module")
def base4(tmp_path_factory):
    """The tiny Mixtral with 4 decoder layers (random weights, seeded)."""
    from recoverlib.tiny.model import make_base

    out = tmp_path_factory.mktemp("tiny4") / "model"
    make_base(out, _spec(4), seed=1)
    return out


@pytest.mark.parametrize("preset", ["bnb-nf4", "bnb-int8+router", "hqq-attn4-exp2+router"])
def test_streaming_equals_whole_model(preset, base4, tmp_path):
    import torch

    from recoverlib.quant.api import inspect_checkpoint, quantize

    streamed = quantize(base4, preset, tmp_path / "stream", progress=False, max_shard_size="200KB")
    shards = sorted(p.name for p in streamed.glob("model-*.safetensors"))
    assert len(shards) > 2 and shards[-1].endswith(f"-of-{len(shards):05d}.safetensors")
    index = json.loads((streamed / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    whole = whole_model_checkpoint(base4, preset, tmp_path / "whole")
    a, b = tensors(streamed), tensors(whole)
    assert set(a) == set(b)
    unequal = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not unequal, unequal[:3]
    meta = json.loads((streamed / "recoverlib_quant.json").read_text())
    assert (
        meta["audit"]["total_bytes"]
        == meta["audit"]["planned_bytes"]
        == inspect_checkpoint(streamed).total_bytes
    )


def test_one_piece_alive_at_a_time(base4, tmp_path, monkeypatch):
    """Quantize and audit never hold two decoder layers: memory does not grow with the number of layers."""
    import gc

    from recoverlib.quant import layerwise
    from recoverlib.quant.api import quantize

    alive: list = []
    most = [0]
    build = layerwise.build_piece

    def tracked(config, piece):
        module = build(config, piece)
        gc.collect()
        alive[:] = [r for r in alive if r() is not None]
        alive.append(weakref.ref(module))
        most[0] = max(most[0], len(alive))
        return module

    monkeypatch.setattr(layerwise, "build_piece", tracked)
    quantize(base4, "hqq-4", tmp_path / "q", progress=False, max_shard_size="300KB")
    assert most[0] == 1


def test_missing_and_truncated_shards_are_one_line(base4, tmp_path):
    from recoverlib.quant.api import quantize
    from recoverlib.quant.checkpoint import Checkpoint, write_sharded

    src = tmp_path / "src"
    src.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (src / f).write_bytes((base4 / f).read_bytes())
    ckpt = Checkpoint.open(base4)
    files = write_sharded(ckpt, list(ckpt.files), src, 300_000)
    assert len(files) > 2
    quantize(src, "bnb-nf4", tmp_path / "ok", progress=False)  # the sharded 16-bit input itself is fine
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) // 2])
    with pytest.raises(RecoverlibError, match="truncated") as err:
        quantize(src, "bnb-nf4", tmp_path / "cut", progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "cut").exists()
    files[1].unlink()
    with pytest.raises(RecoverlibError, match="missing checkpoint shard"):
        quantize(src, "bnb-nf4", tmp_path / "gone", progress=False)
    assert not (tmp_path / "gone").exists()


def test_full_disk_is_one_line_and_leaves_nothing_finished(base4, tmp_path, monkeypatch):
    import errno

    import safetensors.torch

    from recoverlib.quant.api import quantize

    calls = [0]
    real = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    with pytest.raises(RecoverlibError, match="No space left on device") as err:
        quantize(base4, "bnb-nf4", tmp_path / "q", progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "q").exists()
    assert (tmp_path / "q.partial" / "progress.json").is_file()  # a rerun continues from here
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    quantize(base4, "bnb-nf4", tmp_path / "q", progress=False)
    assert not (tmp_path / "q.partial").exists() and (tmp_path / "q" / "recoverlib_quant.json").is_file()


def test_other_arguments_do_not_resume_a_partial_run(base4, tmp_path):
    from recoverlib.quant.api import quantize

    partial = tmp_path / "q.partial"
    partial.mkdir()
    (partial / "progress.json").write_text(json.dumps({"fingerprint": {"plan": "other"}, "done": {}}))
    with pytest.raises(RecoverlibError, match="interrupted quantize with other arguments"):
        quantize(base4, "bnb-nf4", tmp_path / "q", progress=False)
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "x").write_text("x")
    with pytest.raises(RecoverlibError, match="exists and is not empty"):
        quantize(base4, "bnb-nf4", tmp_path / "exists", progress=False)


def test_cuda_device_without_cuda_is_one_line(base4, tmp_path):
    import torch

    from recoverlib.quant.api import quantize

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RecoverlibError, match="CUDA is not available"):
        quantize(base4, "bnb-nf4", tmp_path / "q", device="cuda")
    with pytest.raises(RecoverlibError, match="give cpu, cuda or cuda:N"):
        quantize(base4, "bnb-nf4", tmp_path / "q", device="gpu")


GPTQ = "gptq-attn8-exp4"


@pytest.fixture(scope="module")
def gptq_streamed(base4, tmp_path_factory):
    """``recoverlib quantize`` with a GPTQ plan, straight through, in small shards."""
    from recoverlib.quant.api import quantize

    return quantize(
        base4, GPTQ, tmp_path_factory.mktemp("gptq") / "q", progress=False, max_shard_size="200KB"
    )


def _same_files(a: Path, b: Path) -> None:
    files = sorted(p.name for p in a.glob("*.safetensors"))
    assert files == sorted(p.name for p in b.glob("*.safetensors")) and len(files) > 1
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_gptq_streams_sharded_and_equals_the_whole_model_path(gptq_streamed, base4, tmp_path):
    import torch

    from recoverlib.quant.api import load_quantized
    from recoverlib.quant.backends import get_backend
    from recoverlib.quant.checkpoint import memory_name
    from recoverlib.quant.layerwise import load_model
    from recoverlib.quant.plan import load_plan

    index = json.loads((gptq_streamed / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert not (gptq_streamed.parent / "q.partial").exists()
    meta = json.loads((gptq_streamed / "recoverlib_quant.json").read_text())
    assert meta["audit"]["total_bytes"] == meta["audit"]["planned_bytes"] and meta["calibration_texts"] > 0
    # GPTQModel's own whole-model quantize writes the same tensors, under its names (mlp.experts.N.gate_proj)
    whole = whole_model_checkpoint(base4, GPTQ, tmp_path / "whole")
    a, b = tensors(gptq_streamed, memory_name), tensors(whole)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    # Mixtral's published layout
    assert any(".block_sparse_moe.experts.0.w1." in k for k in index["weight_map"])
    # The layer-by-layer rebuild (what the audit and the HF engine read) computes what GPTQModel's own loader
    # builds from its own layout (its scales in fp16: GPTQModel casts them to the compute dtype on load).
    plan, backend = load_plan(GPTQ), get_backend("gptq")
    with backend.session(plan, "cpu"):
        theirs = _gptqmodel_load(whole, plan)
    ids = torch.randint(3, 2048, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(load_quantized(gptq_streamed)(ids).logits, theirs(ids).logits)
        with backend.session(plan, "cpu"):
            assert torch.equal(load_model(whole, plan, backend)(ids).logits, theirs(ids).logits)


def _gptqmodel_load(path: Path, plan):
    """GPTQModel's own loader on its own layout, with the fp16 scales put back as recoverlib keeps them."""
    import torch
    from gptqmodel import BACKEND, GPTQModel

    from recoverlib.quant.checkpoint import Checkpoint

    model = GPTQModel.load(
        str(path), device="cpu", backend=BACKEND.TORCH, dtype=getattr(torch, plan.compute_dtype)
    ).model
    ckpt = Checkpoint.open(path)
    for name, module in model.named_modules():
        if f"{name}.scales" in ckpt.files and getattr(module, "qweight", None) is not None:
            module.scales = ckpt.read([f"{name}.scales"])[f"{name}.scales"]
    return model.eval()


def test_gptq_resumes_after_its_finished_loop(gptq_streamed, base4, tmp_path, monkeypatch):
    """Killed after GPTQModel's loop (here: the audit fails once), a rerun reuses the quantized shards."""
    from recoverlib.quant import stream
    from recoverlib.quant.api import quantize
    from recoverlib.quant.backends.gptq import GptqBackend

    seal = stream._seal
    monkeypatch.setattr(stream, "_seal", lambda *a: (_ for _ in ()).throw(RecoverlibError("interrupted")))
    with pytest.raises(RecoverlibError, match="interrupted"):
        quantize(base4, GPTQ, tmp_path / "q", progress=False, max_shard_size="200KB")
    assert not (tmp_path / "q").exists() and (tmp_path / "q.partial" / "quantized").is_dir()
    monkeypatch.setattr(stream, "_seal", seal)
    runs = []
    loop = GptqBackend.quantize_to
    monkeypatch.setattr(
        GptqBackend, "quantize_to", lambda self, *a, **k: runs.append(1) or loop(self, *a, **k)
    )
    quantize(base4, GPTQ, tmp_path / "q", progress=False, max_shard_size="200KB")
    assert runs == [] and not (tmp_path / "q.partial").exists()
    _same_files(tmp_path / "q", gptq_streamed)
    # A damaged shard of the finished loop is not trusted: the loop runs again.
    monkeypatch.setattr(stream, "_seal", lambda *a: (_ for _ in ()).throw(RecoverlibError("interrupted")))
    with pytest.raises(RecoverlibError):
        quantize(base4, GPTQ, tmp_path / "r", progress=False, max_shard_size="200KB")
    shard = next((tmp_path / "r.partial" / "quantized").glob("model-00002-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:100])
    monkeypatch.setattr(stream, "_seal", seal)
    runs.clear()
    quantize(base4, GPTQ, tmp_path / "r", progress=False, max_shard_size="200KB")
    assert len(runs) == 1
    _same_files(tmp_path / "r", gptq_streamed)


def test_gptq_full_disk_is_one_line_and_the_rerun_finishes(gptq_streamed, base4, tmp_path, monkeypatch):
    import errno

    from recoverlib.quant.api import quantize
    from recoverlib.quant.backends.gptq import GptqBackend
    from recoverlib.quant.plan import load_plan

    with GptqBackend().session(load_plan(GPTQ), "cpu"):  # imports gptqmodel, its transformers patches undone
        from gptqmodel.models import writer
    real = writer.streaming_state_dict_to_shards

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "streaming_state_dict_to_shards", full)
    with pytest.raises(RecoverlibError, match="No space left on device") as err:
        quantize(base4, GPTQ, tmp_path / "q", progress=False, max_shard_size="200KB")
    assert "\n" not in str(err.value) and not (tmp_path / "q").exists()
    monkeypatch.setattr(writer, "streaming_state_dict_to_shards", real)
    quantize(base4, GPTQ, tmp_path / "q", progress=False, max_shard_size="200KB")
    _same_files(tmp_path / "q", gptq_streamed)


def test_gptq_sigkill_inside_its_loop_then_rerun_writes_the_same_bytes(gptq_streamed, base4, tmp_path):
    out = tmp_path / "q"
    cmd = [
        sys.executable,
        "-m",
        "recoverlib.cli",
        "quantize",
        "--model",
        str(base4),
        "--plan",
        GPTQ,
        "--out",
        str(out),
        "--max-shard-size",
        "200KB",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    offload = tmp_path / "q.partial" / "gptq-scratch" / "offload"
    deadline = time.monotonic() + 120
    while (
        time.monotonic() < deadline
        and proc.poll() is None
        and not (offload.is_dir() and any(offload.iterdir()))
    ):
        time.sleep(0.02)
    assert proc.poll() is None, "finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and not (tmp_path / "q.partial" / "quantized" / "recoverlib_quant.json").exists()
    from recoverlib.quant.api import quantize

    quantize(base4, GPTQ, out, progress=False, max_shard_size="200KB")
    assert not (tmp_path / "q.partial").exists()
    _same_files(out, gptq_streamed)


# The real CLI in a subprocess; each finished piece is followed by a 0.3 s pause so the test can kill it
# part-way (the tiny model's pieces take milliseconds).
SLOW_CLI = """
import sys, time
from recoverlib.quant import progress
mark = progress.RunRecord.mark
progress.RunRecord.mark = lambda self, piece: (mark(self, piece), time.sleep(float(sys.argv[1])))
from recoverlib.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _cli(base: Path, out: Path, pause: float) -> list[str]:
    return [
        sys.executable,
        "-c",
        SLOW_CLI,
        str(pause),
        "quantize",
        "--model",
        str(base),
        "--plan",
        "hqq-attn4-exp2",
        "--out",
        str(out),
        "--max-shard-size",
        "300KB",
        "--quiet",
    ]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_sigkill_then_rerun_continues_and_writes_the_same_bytes(base4, tmp_path, monkeypatch):
    out = tmp_path / "q"
    proc = subprocess.Popen(
        _cli(base4, out, 0.5), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    progress = tmp_path / "q.partial" / "progress.json"
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None and done < 2:
        try:
            done = len(json.loads(progress.read_text())["done"])
        except (OSError, ValueError):
            done = 0
        time.sleep(0.02)
    assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()[-500:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and 2 <= done < 5  # 5 pieces: the outer modules and 4 layers
    from recoverlib.quant import layerwise
    from recoverlib.quant.api import quantize

    read, pieces = layerwise.read_source_piece, []
    monkeypatch.setattr(layerwise, "read_source_piece", lambda *a: pieces.append(a[2]) or read(*a))
    # the same arguments, resumed
    quantize(base4, "hqq-attn4-exp2", out, progress=False, max_shard_size="300KB")
    assert len(pieces) == 5 - done  # only the unfinished pieces were quantized again
    assert not (tmp_path / "q.partial").exists()
    straight = quantize(
        base4, "hqq-attn4-exp2", tmp_path / "straight", progress=False, max_shard_size="300KB"
    )
    _same_files(out, straight)


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("preset", ["bnb-nf4", "hqq-attn4-exp2", GPTQ])
def test_quantize_on_cuda_audits_and_reloads(preset, base4, tmp_path):
    import torch

    from recoverlib.quant.api import load_quantized, quantize
    from recoverlib.quant.compare import logits_error

    out = quantize(base4, preset, tmp_path / "q", device="cuda", progress=False, max_shard_size="300KB")
    meta = json.loads((out / "recoverlib_quant.json").read_text())
    assert meta["audit"]["total_bytes"] == meta["audit"]["planned_bytes"]
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(base4, dtype=torch.bfloat16).eval()
    ids = torch.randint(3, 2048, (2, 12), generator=torch.Generator().manual_seed(0))
    model = load_quantized(out, device_map="cuda:0")
    assert next(model.parameters()).device.type == "cuda"
    assert logits_error(ref, model, ids)["rel_error"] < 0.7


def _peak_rss(cmd: list[str]) -> int:
    """Peak RSS (bytes) of one subprocess, that process alone (the benchmarks' measured run)."""
    from benchmarks.report import run_measured

    return run_measured(cmd, _env())[1]


@pytest.mark.slow
def test_peak_rss_does_not_grow_with_layers(tmp_path):
    """2 and 6 layers of 176 MB (bf16) each: the 6-layer quantize peaks less than one layer above the 2-layer
    one."""
    from benchmarks.synthetic_checkpoint import write_checkpoint

    shapes = {
        "hidden_size": 1024,
        "intermediate_size": 3584,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 128,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "vocab_size": 4000,
    }
    layer_bytes = 2 * (3 * 8 * 1024 * 3584 + 1024 * (2 * 1024 + 2 * 256) + 8 * 1024)
    peaks = {}
    for layers in (2, 6):
        src = write_checkpoint(
            tmp_path / f"src{layers}", {**shapes, "num_hidden_layers": layers}, shard_bytes=300 * 10**6
        )
        peaks[layers] = _peak_rss(
            [
                sys.executable,
                "-m",
                "recoverlib.cli",
                "quantize",
                "--model",
                str(src),
                "--plan",
                "bnb-nf4",
                "--out",
                str(tmp_path / f"q{layers}"),
                "--max-shard-size",
                "100MB",
                "--quiet",
            ]
        )
    assert peaks[6] - peaks[2] < layer_bytes, (peaks, layer_bytes)
