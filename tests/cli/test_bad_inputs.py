"""Bad inputs a user sends, per command, through the CLI: each ends in one error line, exit 2, nothing
written.

Every case runs ``recoverlib.cli.main`` in-process inside a workspace of valid and broken files; the
workspace is fingerprinted (every file's bytes, every link) before and after, so a case also fails if
anything was created, changed or removed. Every command the CLI registers must have cases here (asserted
below). The workspace also holds a port something listens on (``busy_port``) and a samples file written
with known settings (``resumable.jsonl``). ``benchmarks/bad_inputs.py`` runs this table as a user would (one
``python -m recoverlib.cli`` per case) and times each answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from recoverlib.cli import main

ERROR_LINE = re.compile(r"^recoverlib( [\w-]+)?: error: ")


@pytest.fixture(scope="module")
def ws_template(tmp_path_factory, tiny_model, tiny_adapters, sample_csv, sample_truth_csv):
    """Valid and broken inputs, made once; each case gets a fresh copy."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield build_workspace(tmp_path_factory.mktemp("ws"), tiny_model, tiny_adapters, sample_csv,
                              sample_truth_csv, busy.getsockname()[1])


def build_workspace(root: Path, tiny_model: Path, tiny_adapters, sample_csv: Path, sample_truth_csv: Path,
                    busy_port: int) -> Path:
    """The files every case runs among (``busy_port``: a port the caller keeps listening on)."""
    (root / "busy_port").write_text(str(busy_port))
    shutil.copy(sample_csv, root / "in.csv")
    shutil.copy(sample_truth_csv, root / "truth.csv")
    ids = list(pd.read_csv(sample_csv, dtype=str)["id"])
    lines = [{"id": i, "samples": [{"adapter": "a", "index": 0, "text": f"Rewrite this {i}"}]} for i in ids]
    (root / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (root / "torn_middle.jsonl").write_text(
        json.dumps(lines[0]) + "\n" + '{"id": "x", "sam\n' + json.dumps(lines[1]) + "\n"
    )
    (root / "other_ids.jsonl").write_text(json.dumps({"id": "zzz", "samples": []}) + "\n")
    (root / "combo.json").write_text(json.dumps({"strategy": "concat"}))
    (root / "medoid.json").write_text(json.dumps({"strategy": "medoid"}))
    (root / "unknown_strategy.json").write_text(json.dumps({"strategy": "no-such-strategy"}))
    (root / "not.json").write_text("{strategy: concat")
    (root / "list.json").write_text("[1, 2]")
    (root / "empty.csv").write_text("")
    (root / "binary.csv").write_bytes(b"\xff\xfe\x00\x81" * 64)
    (root / "no_text.csv").write_text("id,original,rewritten_text\n1,a,b\n")
    (root / "no_truth.csv").write_text("id,original_text,rewritten_text\n1,a,b\n")
    (root / "empty_truth.csv").write_text("id,rewrite_prompt\nr01,\n")
    (root / "mean.txt").write_text("Rewrite this text.\n")
    (root / "stale.json.partial.jsonl").write_text(json.dumps({"digest": "0" * 64}) + "\n")  # another tune's
    (root / "one_pred.csv").write_text(f"id,rewrite_prompt\n{ids[0]},Rewrite\n")
    (root / "folder").mkdir()
    (root / "busy").mkdir()
    (root / "busy" / "mine.txt").write_text("the user's own file\n")
    shutil.copytree(tiny_model, root / "model", symlinks=True)
    untokenized = root / "untokenized"  # a model folder without tokenizer files
    untokenized.mkdir()
    for f in tiny_model.iterdir():
        if f.is_file() and not f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, untokenized / f.name)
    llama = root / "llama"
    llama.mkdir()
    cfg = json.loads((tiny_model / "config.json").read_text())
    (llama / "config.json").write_text(
        json.dumps({**cfg, "model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    (root / "gpt2").mkdir()  # a family recoverlib does not quantize
    (root / "gpt2" / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    pickled = root / "pickled_model"
    pickled.mkdir()
    shutil.copy(tiny_model / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    _adapter_variants(root, tiny_adapters["tiny-a"])
    _resumable(root, ids)
    return root


def _resumable(root: Path, ids: list[str]) -> None:
    """``resumable.jsonl``: a samples file with one row, written with the settings of :func:`_predict`."""
    from recoverlib.engines import EngineConfig, SamplingConfig
    from recoverlib.engines.hf import HFEngine
    from recoverlib.io import Sample
    from recoverlib.pipeline import PredictConfig
    from recoverlib.pipeline.record import SampleStore
    from recoverlib.pipeline.run_settings import BaseRun, run_settings

    config = PredictConfig(SamplingConfig(samples=1, max_new_tokens=4))
    settings = run_settings(config, [BaseRun("hf", root / "model", {}, EngineConfig(), HFEngine.chunk_rows)])
    store = SampleStore(root / "resumable.jsonl", ids, settings=settings)
    store.append([(ids[0], (Sample(None, 0, "Rewrite it"),))], None)


def _adapter_variants(root: Path, good: Path) -> None:
    shutil.copytree(good, root / "adapter")
    trunc = root / "adapter_truncated"
    shutil.copytree(good, trunc)
    data = (trunc / "adapter_model.safetensors").read_bytes()
    (trunc / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    extra = root / "adapter_extra_target"
    shutil.copytree(good, extra)
    cfg = json.loads((extra / "adapter_config.json").read_text())
    (extra / "adapter_config.json").write_text(
        json.dumps({**cfg, "target_modules": [*cfg["target_modules"], "gate_proj"]})
    )
    other_rank = root / "adapter_other_model"
    shutil.copytree(good, other_rank)
    (other_rank / "adapter_config.json").write_text(json.dumps({**cfg, "r": cfg["r"] * 2}))
    pickled = root / "adapter_pickled"
    pickled.mkdir()
    shutil.copy(good / "adapter_config.json", pickled / "adapter_config.json")
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    broken_cfg = root / "adapter_bad_config"
    shutil.copytree(good, broken_cfg)
    (broken_cfg / "adapter_config.json").write_text("{r: 4")


@pytest.fixture
def ws(ws_template, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(ws_template, root, symlinks=True)
    return root


def fingerprint(root: Path) -> dict[str, str]:
    """Every path under ``root`` -> its bytes' hash (files), its target (links) or "dir"."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            out[key] = "-> " + os.readlink(path)
        elif path.is_dir():
            out[key] = "dir"
        else:
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def assert_refused(argv: list[str], root: Path, capsys, expect: str) -> None:
    """Exit 2, exactly one error line (containing ``expect``), no traceback, nothing under ``root``
    changed."""
    before = fingerprint(root)
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own errors (a usage line, then one error line)
        code = exit.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ERROR_LINE.match(line)]
    assert code == 2, err[-3000:]
    assert len(errors) == 1, err[-3000:]
    assert expect in errors[0], errors[0]
    assert "Traceback" not in err, err[-3000:]
    assert fingerprint(root) == before


# -- the table: (command, case id, argv builder over the workspace, expected part of the error line)
# ----------


def _predict(w, *extra, out="out.csv", model="model"):
    return [
        "predict",
        "--engine",
        "hf",
        "--model",
        f"{w}/{model}",
        "--input",
        f"{w}/in.csv",
        "--out",
        f"{w}/{out}",
        "--max-new-tokens",
        "4",
        "--samples",
        "1",
        *extra,
    ]


def _openai(w, url, *extra):
    return _predict(w, "--engine", "openai", "--server-url", url, *extra)


def _resume(w, *extra, model="model"):
    return _predict(w, "--samples-file", f"{w}/resumable.jsonl", "--resume", *extra, model=model)


def _link(kind):
    def make(w):
        (os.symlink if kind == "sym" else os.link)(w / "in.csv", w / "link.csv")
        return _predict(w, out="link.csv")
    return make


def _score(w, pred="samples_sub.csv", truth="truth.csv", embedder="minilm"):
    return ["score", "--predictions", f"{w}/{pred}", "--truth", f"{w}/{truth}", "--embedder", embedder]


def _score_valid(w, **kw):
    shutil.copy(w / "truth.csv", w / "pred.csv")
    return _score(w, pred="pred.csv", **kw)


def _tiny(w, *extra):
    return ["make-tiny", "--adapters", "1", *extra]


def _task(w, *extra):
    return ["make-task", "--rows", "5", "--eval-rows", "2", *extra]


def _train(w, *extra, model="model", train="task_train.csv", out="adapter_out"):
    return [
        "train",
        "--model",
        f"{w}/{model}",
        "--train",
        f"{w}/{train}",
        "--out",
        f"{w}/{out}",
        "--epochs",
        "1",
        "--score-rows",
        "0",
        "--plan",
        "none",
        *extra,
    ]


def _train_csv(w):
    (w / "task_train.csv").write_text(
        "id,original_text,rewritten_text,rewrite_prompt\n1,a b,b a,Reverse it\n"
    )


def _trainw(*extra, **kw):
    def make(w):
        _train_csv(w)
        return _train(w, *extra, **kw)
    return make


def _quantize(w, *extra, model="model", plan="bnb-int8", out="q"):
    return ["quantize", "--model", f"{w}/{model}", "--plan", plan, "--out", f"{w}/{out}", *extra]


def _opt(w, *extra, train="truth.csv", out="mean_out.txt"):
    return ["optimize-prompt", "--train", f"{w}/{train}", "--out", f"{w}/{out}", "--embedder", "minilm",
            "--steps", "1", "--vocab-size", "5", *extra]


def _suffix(w, *extra, samples="samples.jsonl", truth="truth.csv", out="suffix_out.txt"):
    return [
        "search-suffix",
        "--samples-file",
        f"{w}/{samples}",
        "--truth",
        f"{w}/{truth}",
        "--out",
        f"{w}/{out}",
        "--embedder",
        "minilm",
        "--steps",
        "1",
        "--vocab-size",
        "5",
        *extra,
    ]


def _tune(w, *extra, samples="samples.jsonl", truth="truth.csv", out="tuned.json"):
    return ["tune", "--samples-file", f"{w}/{samples}", "--truth", f"{w}/{truth}", "--out", f"{w}/{out}",
            "--embedder", "minilm", "--strategies", "first", "--bootstrap", "10", *extra]


def _combine(w, *extra, samples="samples.jsonl", combination="combo.json", out="sub.csv", embedder="minilm"):
    return ["combine", "--samples-file", f"{w}/{samples}", "--combination", f"{w}/{combination}",
            "--out", f"{w}/{out}", "--embedder", embedder, *extra]


NO_EMBEDDER = "/nonexistent/embedder"

CASES = [
    # predict: outputs over inputs
    ("predict", "out-is-input", lambda w: _predict(w, out="in.csv"), "same file as the input"),
    ("predict", "out-symlink-to-input", _link("sym"), "same file as the input"),
    ("predict", "out-hardlink-to-input", _link("hard"), "same file as the input"),
    (
        "predict",
        "samples-file-is-input",
        lambda w: _predict(w, "--samples-file", f"{w}/in.csv"),
        "same file as the input",
    ),
    (
        "predict",
        "samples-file-is-out",
        lambda w: _predict(w, "--samples-file", f"{w}/out.csv"),
        "same file as the samples file",
    ),
    ("predict", "out-is-folder", lambda w: _predict(w, out="folder"), "is a folder"),
    # predict: input files
    ("predict", "missing-input", lambda w: [*_predict(w), "--input", f"{w}/nope.csv"], "no such file"),
    ("predict", "input-is-folder", lambda w: [*_predict(w), "--input", f"{w}/folder"], "no such file"),
    ("predict", "input-empty", lambda w: [*_predict(w), "--input", f"{w}/empty.csv"], "not a readable CSV"),
    ("predict", "input-binary", lambda w: [*_predict(w), "--input", f"{w}/binary.csv"], "binary.csv"),
    (
        "predict",
        "input-misnamed-column",
        lambda w: [*_predict(w), "--input", f"{w}/no_text.csv"],
        "missing column(s) 'original_text'",
    ),
    # predict: values out of range (checked before any model loads)
    ("predict", "samples-0", lambda w: _predict(w, "--samples", "0"), "samples must be >= 1"),
    ("predict", "samples-negative", lambda w: _predict(w, "--samples", "-3"), "samples must be >= 1"),
    (
        "predict",
        "max-new-tokens-0",
        lambda w: _predict(w, "--max-new-tokens", "0"),
        "max_new_tokens must be >= 1",
    ),
    (
        "predict",
        "temperature-negative",
        lambda w: _predict(w, "--temperature", "-1"),
        "temperature must be >= 0",
    ),
    ("predict", "temperature-nan", lambda w: _predict(w, "--temperature", "nan"), "temperature must be >= 0"),
    ("predict", "top-p-0", lambda w: _predict(w, "--top-p", "0"), "top_p must be in (0, 1]"),
    ("predict", "top-p-above-1", lambda w: _predict(w, "--top-p", "1.5"), "top_p must be in (0, 1]"),
    ("predict", "batch-size-0", lambda w: _predict(w, "--batch-size", "0"), "batch_size must be >= 1"),
    ("predict", "chunk-rows-0", lambda w: _predict(w, "--chunk-rows", "0"), "chunk_rows must be >= 1"),
    (
        "predict",
        "max-model-len-0",
        lambda w: _predict(w, "--max-model-len", "0"),
        "max_model_len must be >= 1",
    ),
    ("predict", "max-model-len-below-new-tokens", lambda w: _predict(w, "--max-model-len", "8"), "leaves"),
    ("predict", "kv-cache-0", lambda w: _predict(w, "--kv-cache-gib", "0"), "kv_cache_gib must be > 0"),
    ("predict", "unknown-dtype", lambda w: _predict(w, "--dtype", "float99"), "invalid choice: 'float99'"),
    ("predict", "unknown-engine", lambda w: _predict(w, "--engine", "nope"), "unknown engine 'nope'"),
    ("predict", "unknown-lora-mode", lambda w: _predict(w, "--lora-mode", "nope"), "invalid choice"),
    # predict: models and adapters
    ("predict", "model-missing", lambda w: _predict(w, model="nope"), "no such folder"),
    ("predict", "model-not-a-model", lambda w: _predict(w, model="folder"), "not an HF model folder"),
    ("predict", "model-pickle-only", lambda w: _predict(w, model="pickled_model"), "pickle"),
    (
        "predict",
        "two-bases-one-unnamed",
        lambda w: [*_predict(w), "--model", f"other={w}/model"],
        "NAME=PATH",
    ),
    (
        "predict",
        "two-bases-adapter-without-base",
        lambda w: [
            *_predict(w, model=f"a={w}/model"),
            "--model",
            f"b={w}/model",
            "--adapter",
            f"x={w}/model",
        ],
        "BASE:NAME=PATH",
    ),
    ("predict", "adapter-missing", lambda w: _predict(w, "--adapter", f"a={w}/nope"), "no such folder"),
    (
        "predict",
        "adapter-not-name-path",
        lambda w: _predict(w, "--adapter", f"{w}/adapter"),
        "expected NAME=PATH",
    ),
    (
        "predict",
        "adapter-duplicate-name",
        lambda w: _predict(w, "--adapter", f"a={w}/adapter", "--adapter", f"a={w}/adapter"),
        "duplicate adapter name",
    ),
    (
        "predict",
        "adapter-truncated",
        lambda w: _predict(w, "--adapter", f"a={w}/adapter_truncated"),
        "not a whole safetensors",
    ),
    (
        "predict",
        "adapter-target-without-weights",
        lambda w: _predict(w, "--adapter", f"a={w}/adapter_extra_target"),
        "targets gate_proj",
    ),
    (
        "predict",
        "adapter-for-another-model",
        lambda w: _predict(w, "--adapter", f"a={w}/adapter_other_model"),
        "adapter for another model",
    ),
    (
        "predict",
        "adapter-pickle-only",
        lambda w: _predict(w, "--adapter", f"a={w}/adapter_pickled"),
        "adapter_model.bin",
    ),
    (
        "predict",
        "adapter-config-not-json",
        lambda w: _predict(w, "--adapter", f"a={w}/adapter_bad_config"),
        "is not JSON",
    ),
    (
        "predict",
        "adapter-not-peft",
        lambda w: _predict(w, "--adapter", f"a={w}/folder"),
        "not a PEFT adapter folder",
    ),
    # predict: combination, embedder, resume
    (
        "predict",
        "combination-missing",
        lambda w: _predict(w, "--combination", f"{w}/nope.json"),
        "no such combination file",
    ),
    ("predict", "combination-not-json", lambda w: _predict(w, "--combination", f"{w}/not.json"), "not JSON"),
    (
        "predict",
        "combination-not-object",
        lambda w: _predict(w, "--combination", f"{w}/list.json"),
        "expected an object",
    ),
    (
        "predict",
        "combination-unknown-strategy",
        lambda w: _predict(w, "--combination", f"{w}/unknown_strategy.json"),
        "no-such-strategy",
    ),
    (
        "predict",
        "embedder-cannot-load",
        lambda w: _predict(w, "--combination", f"{w}/medoid.json", "--embedder", NO_EMBEDDER),
        "cannot load embedder",
    ),
    (
        "predict",
        "resume-other-ids",
        lambda w: _predict(w, "--resume", "--samples-file", f"{w}/other_ids.jsonl"),
        "not in the input",
    ),
    (
        "predict",
        "resume-torn-middle-line",
        lambda w: _predict(w, "--resume", "--samples-file", f"{w}/torn_middle.jsonl"),
        "not a samples line",
    ),
    ("predict", "unknown-executor", lambda w: _predict(w, "--executor", "nope"), "unknown executor 'nope'"),
    (
        "predict",
        "ray-workers-0",
        lambda w: _predict(w, "--executor", "ray", "--workers", "0"),
        "workers and in_flight",
    ),
    ("predict", "openai-without-url", lambda w: _predict(w, "--engine", "openai"), "needs --server-url"),
    (
        "predict",
        "openai-unreachable",
        lambda w: _predict(w, "--engine", "openai", "--server-url", "http://127.0.0.1:1", "--retries", "0"),
        "does not answer /v1/models",
    ),
    (
        "predict",
        "openai-concurrency-0",
        lambda w: _predict(
            w, "--engine", "openai", "--server-url", "http://127.0.0.1:1", "--concurrency", "0"
        ),
        "concurrency must be >= 1",
    ),
    (
        "predict",
        "preset-with-openai",
        lambda w: _predict(w, "--engine", "openai", "--preset", "kaggle-t4x2"),
        "engine 'openai' has its own settings",
    ),
    ("predict", "openai-not-a-url", lambda w: _openai(w, "not a url"), "is not a server URL"),
    ("predict", "openai-url-without-scheme", lambda w: _openai(w, "127.0.0.1:8000"), "is not a server URL"),
    (
        "predict",
        "openai-url-port-out-of-range",
        lambda w: _openai(w, "http://127.0.0.1:99999"),
        "out of range",
    ),
    (
        "predict",
        "openai-min-tokens-per-s-0",
        lambda w: _openai(w, "http://127.0.0.1:1", "--min-tokens-per-s", "0"),
        "--min-tokens-per-s > 0",
    ),
    # predict: resuming a samples file written with other settings (nothing sampled, nothing written)
    (
        "predict",
        "resume-other-seed",
        lambda w: _resume(w, "--seed", "9"),
        "written with seed 0; this run has seed 9",
    ),
    (
        "predict",
        "resume-other-samples",
        lambda w: _resume(w, "--samples", "3"),
        "written with samples 1; this run",
    ),
    (
        "predict",
        "resume-other-temperature",
        lambda w: _resume(w, "--temperature", "0.2"),
        "with temperature 0.7",
    ),
    ("predict", "resume-other-top-p", lambda w: _resume(w, "--top-p", "0.5"), "with top p 0.95; this run"),
    (
        "predict",
        "resume-other-max-new-tokens",
        lambda w: _resume(w, "--max-new-tokens", "8"),
        "max new tokens 4",
    ),
    ("predict", "resume-other-template", lambda w: _resume(w, "--template", "plain"), "template kind auto"),
    (
        "predict",
        "resume-other-model",
        lambda w: _resume(w, model="untokenized"),
        "written with model sha256:",
    ),
    (
        "predict",
        "resume-other-adapters",
        lambda w: _resume(w, "--adapter", f"a={w}/adapter"),
        "written with adapter a None; this run has adapter a sha256:",
    ),
    (
        "predict",
        "resume-other-engine",
        lambda w: _resume(w, "--batch-size", "3"),
        "seeded per batch of 16 rows",
    ),
    # predict: a Ray cluster that cannot give what is asked
    (
        "predict",
        "ray-gpus-on-a-cluster-without",
        lambda w: _predict(w, "--executor", "ray", "--gpus-per-worker", "1"),
        "--gpus-per-worker 1: the Ray cluster has no GPU",
    ),
    (
        "predict",
        "ray-env-not-set",
        lambda w: _predict(w, "--executor", "ray", "--ray-env", "RECOVERLIB_NEVER_SET"),
        "--ray-env RECOVERLIB_NEVER_SET: not set here",
    ),
    (
        "predict",
        "ray-address-malformed",
        lambda w: _predict(w, "--executor", "ray", "--ray-address", "nowhere"),
        "give auto or HOST:PORT",
    ),
    (
        "predict",
        "ray-max-ahead-0",
        lambda w: _predict(w, "--executor", "ray", "--max-ahead", "0"),
        "max_ahead",
    ),
    # score
    ("score", "predictions-missing", lambda w: _score(w, pred="nope.csv"), "no such file"),
    ("score", "predictions-folder", lambda w: _score(w, pred="folder"), "no such file"),
    (
        "score",
        "predictions-wrong-columns",
        lambda w: _score(w, pred="in.csv"),
        "missing column(s) 'rewrite_prompt'",
    ),
    ("score", "predictions-binary", lambda w: _score(w, pred="binary.csv"), "binary.csv"),
    (
        "score",
        "truth-empty-prompt",
        lambda w: _score(w, pred="truth.csv", truth="empty_truth.csv"),
        "empty rewrite_prompt",
    ),
    ("score", "missing-predictions-for-ids", lambda w: _score(w, pred="one_pred.csv"), "no prediction for"),
    (
        "score",
        "embedder-cannot-load",
        lambda w: _score_valid(w, embedder=NO_EMBEDDER),
        "cannot load embedder",
    ),
    # make-tiny
    ("make-tiny", "out-is-file", lambda w: _tiny(w, "--out", f"{w}/in.csv"), "is a file"),
    ("make-tiny", "out-is-foreign-folder", lambda w: _tiny(w, "--out", f"{w}/busy"), "not empty"),
    (
        "make-tiny",
        "adapters-negative",
        lambda w: _tiny(w, "--out", f"{w}/t", "--adapters", "-1"),
        "adapters must be",
    ),
    (
        "make-tiny",
        "adapters-too-many",
        lambda w: _tiny(w, "--out", f"{w}/t", "--adapters", "99"),
        "adapters must be",
    ),
    ("make-tiny", "out-missing", lambda w: _tiny(w), "give the output folder"),
    (
        "make-tiny",
        "trained-dense",
        lambda w: _tiny(w, "--out", f"{w}/t", "--trained", "--family", "gemma"),
        "makes the tiny Mixtral only",
    ),
    # make-task
    ("make-task", "rows-0", lambda w: _task(w, "--out", f"{w}/task", "--rows", "0"), "must be >= 1"),
    (
        "make-task",
        "eval-rows-negative",
        lambda w: _task(w, "--out", f"{w}/task", "--eval-rows", "-1"),
        "must be >= 1",
    ),
    (
        "make-task",
        "ambiguity-above-1",
        lambda w: _task(w, "--out", f"{w}/task", "--ambiguity", "2"),
        "ambiguity must be",
    ),
    ("make-task", "out-is-file", lambda w: _task(w, "--out", f"{w}/in.csv"), "is a file"),
    ("make-task", "out-is-foreign-folder", lambda w: _task(w, "--out", f"{w}/busy"), "not empty"),
    ("make-task", "out-is-model-folder", lambda w: _task(w, "--out", f"{w}/model"), "not empty"),
    # train
    ("train", "model-missing", _trainw(model="nope"), "no such folder"),
    ("train", "model-not-a-model", _trainw(model="folder"), "not an HF model folder"),
    ("train", "model-pickle-only", _trainw(model="pickled_model"), "pickle"),
    ("train", "train-missing", lambda w: _train(w, train="nope.csv"), "no such file"),
    (
        "train",
        "train-without-prompts",
        lambda w: _train(w, train="no_truth.csv"),
        "missing column(s) 'rewrite_prompt'",
    ),
    ("train", "train-binary", lambda w: _train(w, train="binary.csv"), "binary.csv"),
    ("train", "validation-missing", _trainw("--validation", "/nonexistent/v.csv"), "no such file"),
    ("train", "epochs-0", _trainw("--epochs", "0"), "epochs 0"),
    ("train", "head-verifier-without-samples", _trainw("--head", "verifier"), "needs --samples-file"),
    ("train", "rank-0", _trainw("--rank", "0"), "rank 0"),
    ("train", "lr-negative", _trainw("--lr", "-1"), "lr -1"),
    ("train", "batch-size-0", _trainw("--batch-size", "0"), "batch_size 0"),
    ("train", "score-rows-negative", _trainw("--score-rows", "-1"), "score_rows -1"),
    ("train", "max-rows-0", _trainw("--max-rows", "0"), "max_rows"),
    ("train", "out-is-model", _trainw(out="model"), "overlaps --model"),
    ("train", "out-inside-model", _trainw(out="model/adapter"), "overlaps --model"),
    ("train", "out-is-foreign-folder", _trainw(out="busy"), "not empty"),
    ("train", "out-is-file", _trainw(out="in.csv"), "is a file"),
    ("train", "no-row-with-prime", _trainw("--prime", "Zzz"), "Zzz"),
    (
        "train",
        "embedder-cannot-load",
        _trainw("--score-rows", "2", "--validation", "/x", "--embedder", NO_EMBEDDER),
        "no such file",
    ),
    # quantize (input checks only; quantization itself is quant/'s)
    ("quantize", "model-missing", lambda w: _quantize(w, model="nope"), "no such folder"),
    ("quantize", "unknown-family", lambda w: _quantize(w, model="gpt2"), "model_type 'gpt2'; recoverlib"),
    (
        "quantize",
        "router-plan-on-a-dense-model",
        lambda w: _quantize(w, model="llama", plan="bnb-int8+router"),
        "quantizes the router, but a dense llama model has none",
    ),
    ("quantize", "out-is-model", lambda w: _quantize(w, out="model"), "overlaps --model"),
    ("quantize", "unknown-plan", lambda w: _quantize(w, plan="nope"), "unknown plan 'nope'"),
    ("quantize", "plan-not-json", lambda w: _quantize(w, plan=f"{w}/not.json"), "not.json"),
    ("quantize", "out-is-foreign-folder", lambda w: _quantize(w, out="busy"), "not empty"),
    (
        "quantize",
        "gptq-without-tokenizer",
        lambda w: _quantize(w, model="untokenized", plan="gptq-attn8-exp4"),
        "no usable tokenizer",
    ),
    # inspect
    ("inspect", "missing", lambda w: ["inspect", f"{w}/nope"], "no such folder"),
    ("inspect", "not-a-model", lambda w: ["inspect", f"{w}/folder"], "not an HF model folder"),
    ("inspect", "a-file", lambda w: ["inspect", f"{w}/in.csv"], "no such folder"),
    ("inspect", "pickle-only", lambda w: ["inspect", f"{w}/pickled_model"], "pickle"),
    # plan
    ("plan", "model-missing", lambda w: ["plan", f"{w}/nope", "--plan", "bnb-nf4"], "nope"),
    ("plan", "not-a-model-folder", lambda w: ["plan", f"{w}/folder", "--plan", "bnb-nf4"], "folder"),
    ("plan", "config-not-json", lambda w: ["plan", f"{w}/not.json", "--plan", "bnb-nf4"], "not.json"),
    ("plan", "unknown-plan", lambda w: ["plan", "mixtral-8x7b", "--plan", "nope-3"], "nope-3"),
    ("plan", "plan-file-not-json", lambda w: ["plan", "mixtral-8x7b", "--plan", f"{w}/not.json"], "not.json"),
    (
        "plan",
        "host-memory-not-a-size",
        lambda w: ["plan", "mixtral-8x7b", "--plan", "bnb-nf4", "--host-memory", "lots"],
        "lots",
    ),
    ("plan", "bad-device", lambda w: ["plan", "mixtral-8x7b", "--plan", "bnb-nf4", "--device", "tpu"], "tpu"),
    (
        "plan",
        "tensor-parallel-0",
        lambda w: ["plan", "mixtral-8x7b", "--plan", "bnb-nf4", "--tensor-parallel-size", "0"],
        "tensor",
    ),
    # optimize-prompt
    ("optimize-prompt", "train-missing", lambda w: _opt(w, train="nope.csv"), "no such file"),
    (
        "optimize-prompt",
        "train-wrong-columns",
        lambda w: _opt(w, train="in.csv"),
        "missing column(s) 'rewrite_prompt'",
    ),
    ("optimize-prompt", "out-is-train", lambda w: _opt(w, out="truth.csv"), "same file as --train"),
    ("optimize-prompt", "out-is-folder", lambda w: _opt(w, out="folder"), "is a folder"),
    ("optimize-prompt", "steps-0", lambda w: _opt(w, "--steps", "0"), "steps"),
    ("optimize-prompt", "beam-0", lambda w: _opt(w, "--beam", "0"), "beam"),
    ("optimize-prompt", "vocab-size-0", lambda w: _opt(w, "--vocab-size", "0"), "vocab_size"),
    ("optimize-prompt", "screen-0", lambda w: _opt(w, "--screen", "0"), "screen"),
    ("optimize-prompt", "holdout-1", lambda w: _opt(w, "--holdout", "1"), "holdout"),
    (
        "optimize-prompt",
        "embedder-cannot-load",
        lambda w: [*_opt(w), "--embedder", NO_EMBEDDER],
        "cannot load embedder",
    ),
    # search-suffix
    ("search-suffix", "samples-missing", lambda w: _suffix(w, samples="nope.jsonl"), "no such samples file"),
    (
        "search-suffix",
        "samples-malformed",
        lambda w: _suffix(w, samples="torn_middle.jsonl"),
        "not a samples line",
    ),
    ("search-suffix", "samples-not-jsonl", lambda w: _suffix(w, samples="in.csv"), "not a samples line"),
    ("search-suffix", "no-shared-ids", lambda w: _suffix(w, samples="other_ids.jsonl"), "have no truth"),
    (
        "search-suffix",
        "truth-wrong-columns",
        lambda w: _suffix(w, truth="in.csv"),
        "missing column(s) 'rewrite_prompt'",
    ),
    (
        "search-suffix",
        "out-is-samples",
        lambda w: _suffix(w, out="samples.jsonl"),
        "same file as --samples-file",
    ),
    ("search-suffix", "rows-0", lambda w: _suffix(w, "--rows", "0"), "rows"),
    ("search-suffix", "shortlist-0", lambda w: _suffix(w, "--shortlist", "0"), "shortlist"),
    (
        "search-suffix",
        "combination-unknown-strategy",
        lambda w: _suffix(w, "--combination", f"{w}/unknown_strategy.json"),
        "no-such-strategy",
    ),
    (
        "search-suffix",
        "embedder-cannot-load",
        lambda w: [*_suffix(w), "--embedder", NO_EMBEDDER],
        "cannot load embedder",
    ),
    # serve
    ("serve", "model-missing", lambda w: ["serve", "--model", f"{w}/nope"], "no such folder"),
    (
        "serve",
        "adapter-missing",
        lambda w: ["serve", "--model", f"{w}/model", "--adapter", f"a={w}/nope"],
        "nope",
    ),
    ("serve", "port-0", lambda w: ["serve", "--model", f"{w}/model", "--port", "0"], "port 0"),
    (
        "serve",
        "port-taken",
        lambda w: ["serve", "--model", f"{w}/model", "--port", (w / "busy_port").read_text()],
        "is taken (another server, or an earlier one still running)",
    ),
    (
        "serve",
        "group-hold-0",
        lambda w: ["serve", "--model", f"{w}/model", "--group-hold-s", "0"],
        "group hold 0.0: give a number of seconds > 0",
    ),
    (
        "serve",
        "lora-mode-merged",
        lambda w: ["serve", "--model", f"{w}/model", "--lora-mode", "merged"],
        "a server serves adapters as LoRA",
    ),
    # convert
    (
        "convert",
        "model-missing",
        lambda w: ["convert", "--model", f"{w}/nope", "--out", f"{w}/c"],
        "no such folder",
    ),
    (
        "convert",
        "not-gptq",
        lambda w: ["convert", "--model", f"{w}/model", "--out", f"{w}/c"],
        "convert takes a GPTQ, AWQ or compressed-tensors checkpoint",
    ),
    (
        "convert",
        "out-is-model",
        lambda w: ["convert", "--model", f"{w}/model", "--out", f"{w}/model"],
        "--model",
    ),
    # tune
    ("tune", "samples-missing", lambda w: _tune(w, samples="nope.jsonl"), "no such samples file"),
    ("tune", "samples-malformed", lambda w: _tune(w, samples="torn_middle.jsonl"), "not a samples line"),
    ("tune", "truth-missing", lambda w: _tune(w, truth="nope.csv"), "no such file"),
    ("tune", "no-shared-ids", lambda w: _tune(w, samples="other_ids.jsonl"), "have no truth"),
    ("tune", "out-is-truth", lambda w: _tune(w, out="truth.csv"), "same file as --truth"),
    ("tune", "out-is-samples", lambda w: _tune(w, out="samples.jsonl"), "same file as --samples-file"),
    ("tune", "unknown-strategy", lambda w: _tune(w, "--strategies", "nope"), "nope"),
    (
        "tune",
        "partial-of-other-inputs",
        lambda w: _tune(w, out="stale.json"),
        "partial tune of other samples",
    ),
    ("tune", "bootstrap-negative", lambda w: _tune(w, "--bootstrap", "-1"), "bootstrap"),
    ("tune", "mean-prompt-missing", lambda w: _tune(w, "--mean-prompt", f"{w}/nope.txt"), "nope.txt"),
    ("tune", "pipeline-not-json", lambda w: _tune(w, "--pipeline", f"{w}/not.json"), "not JSON"),
    ("tune", "verifier-without-rows", lambda w: _tune(w, "--verifier", f"{w}/folder"), "needs --rows"),
    ("tune", "verifier-not-a-head", lambda w: _tune(w, "--verifier", f"{w}/folder", "--rows", f"{w}/in.csv",
                                                   "--strategies", "verifier-rerank"), "not a head folder"),
    (
        "tune",
        "embedder-cannot-load",
        lambda w: [*_tune(w), "--embedder", NO_EMBEDDER],
        "cannot load embedder",
    ),
    # combine
    ("combine", "rows-without-texts", lambda w: _combine(w, "--rows", f"{w}/truth.csv"), "missing column"),
    ("combine", "samples-missing", lambda w: _combine(w, samples="nope.jsonl"), "no such samples file"),
    (
        "combine",
        "samples-malformed",
        lambda w: _combine(w, samples="torn_middle.jsonl"),
        "not a samples line",
    ),
    (
        "combine",
        "combination-missing",
        lambda w: _combine(w, combination="nope.json"),
        "no such combination file",
    ),
    ("combine", "combination-not-json", lambda w: _combine(w, combination="not.json"), "not JSON"),
    ("combine", "out-is-samples", lambda w: _combine(w, out="samples.jsonl"), "same file as --samples-file"),
    ("combine", "out-is-combination", lambda w: _combine(w, out="combo.json"), "same file as --combination"),
    ("combine", "out-is-folder", lambda w: _combine(w, out="folder"), "is a folder"),
    (
        "combine",
        "embedder-cannot-load",
        lambda w: _combine(w, combination="medoid.json", embedder=NO_EMBEDDER),
        "cannot load embedder",
    ),
]

def test_every_command_has_its_bad_inputs():
    """Each command the CLI registers (a new one included) has bad-input cases of its own here."""
    from recoverlib.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    counts = Counter(c[0] for c in CASES)
    assert {c for c in commands if counts[c] < 3} == set(), counts


# Cases that start something first (a local Ray: about 15 s on two busy cores)
SLOW_CASES = {"predict:ray-gpus-on-a-cluster-without"}


@pytest.mark.parametrize(("command", "case", "argv", "expect"), [
    pytest.param(*c, id=f"{c[0]}:{c[1]}", marks=[pytest.mark.slow] if f"{c[0]}:{c[1]}" in SLOW_CASES else [])
    for c in CASES
])
def test_bad_input_is_one_line_and_changes_nothing(command, case, argv, expect, ws, capsys):
    args = argv(ws)
    assert args[0] == command
    assert_refused(args, ws, capsys, expect)
