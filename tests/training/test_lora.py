"""LoRA training through TRL: completion-only labels, loss goes down, adapters serve, primes, bad input."""

from __future__ import annotations

import json
import sys

import pytest

from recoverlib.adapters import ADAPTER_META, adapter_prime
from recoverlib.cli import main
from recoverlib.errors import RecoverlibError
from recoverlib.prompt import RecoveryTemplate, clean_prediction, has_prime
from recoverlib.synthetic import TaskConfig, generate, write_task
from recoverlib.training.lora import (
    TrainConfig,
    build_trainer,
    import_trl,
    train_adapter,
)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("task"), TaskConfig(rows=48, eval_rows=16, seed=5))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """An untrained tiny Mixtral whose tokenizer was learned on the task's text (short sequences)."""
    from recoverlib.tiny.model import TinySpec, save_model
    from recoverlib.training.pretrain import new_model, task_tokenizer

    rows = generate(TaskConfig(rows=300, eval_rows=1, seed=9))["train"]
    tok = task_tokenizer(
        [t for r in rows for t in (r.original_text, r.rewritten_text, r.rewrite_prompt)], 1024
    )
    model = new_model(tok, TinySpec(vocab_size=1024), seed=0)
    return save_model(model, tok, tmp_path_factory.mktemp("base") / "model")


def test_completion_and_prime_semantics():
    t = RecoveryTemplate()
    assert t.completion("Rewrite it as a poem.") == " Rewrite it as a poem."
    assert t.completion("Rewrite it as a poem.", prime="Rewrite") == " it as a poem."
    assert has_prime("Make this text shorter.", "Make this text") and not has_prime(
        "Rewritten by me.", "Rewrite"
    )
    with pytest.raises(ValueError, match="prime"):
        t.completion("Turn it into a poem.", prime="Rewrite")
    assert clean_prediction(" it as a poem.</s>", stop=("</s>",), prime="Rewrite") == "Rewrite it as a poem."


def test_labels_mask_the_prompt_and_training_lowers_completion_loss(base, task, tmp_path):
    from recoverlib.io import read_rows

    rows = read_rows(task / "train.csv", with_truth=True)
    config = TrainConfig(epochs=2, lr=1e-2, batch_size=16, score_rows=0, rank=8)
    trainer, _ = build_trainer(
        base, rows, read_rows(task / "validation.csv", with_truth=True), config, str(tmp_path)
    )
    tok, t = trainer.processing_class, RecoveryTemplate()
    for i in range(3):
        ex, row = trainer.train_dataset[i], rows[i]
        n_prompt = len(
            tok(t.render(tok, row.original_text, row.rewritten_text), add_special_tokens=False)["input_ids"]
        )
        labels = ex.get("labels", None)
        if labels is None:  # TRL keeps the mask separately and builds labels in the collator
            labels = trainer.data_collator([ex])["labels"][0].tolist()
        assert all(x == -100 for x in labels[:n_prompt])
        assert labels[n_prompt:] == ex["input_ids"][n_prompt:] and labels[-1] == tok.eos_token_id
        assert tok.decode(ex["input_ids"][n_prompt:-1]) == t.completion(row.rewrite_prompt)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before - 0.1


def test_train_adapter_keeps_best_epoch_and_serves_in_hf(base, task, tmp_path):
    from recoverlib.engines import EngineConfig, SamplingConfig, make_engine

    config = TrainConfig(epochs=2, lr=5e-3, batch_size=16, score_rows=8, prime="Rewrite", rank=4, alpha=8)
    result = train_adapter(base, task / "train.csv", tmp_path / "ad", task / "validation.csv", config)
    assert [h["epoch"] for h in result.history] == [1, 2] and all("val_score" in h for h in result.history)
    assert result.best_epoch in (1, 2) and 0 < result.train_rows < 48  # prime: only "Rewrite ..." rows
    assert adapter_prime(result.adapter) == "Rewrite"
    assert json.loads((result.adapter / ADAPTER_META).read_text())["best_epoch"] == result.best_epoch
    with make_engine("hf", base, {"a": result.adapter}, EngineConfig(dtype="float32")) as engine:
        prompt = RecoveryTemplate().render(engine.tokenizer, "The cat sat.", "THE CAT SAT.", prime="Rewrite")
        out = engine.generate([prompt], SamplingConfig(temperature=0, max_new_tokens=8), adapters=["a"])
    assert clean_prediction(out["a"][0][0], prime="Rewrite").startswith("Rewrite")


def test_expert_adapter_trains_and_serves_in_hf(base, task, tmp_path):
    from recoverlib.adapters import read_adapter
    from recoverlib.engines import EngineConfig, SamplingConfig, make_engine

    config = TrainConfig(
        epochs=1, lr=5e-3, batch_size=16, score_rows=0, targets="attention+experts", max_rows=16
    )
    result = train_adapter(base, task / "train.csv", tmp_path / "ex", None, config)
    assert read_adapter("ex", result.adapter).targets_experts
    with make_engine("hf", base, {"ex": result.adapter}, EngineConfig(dtype="float32")) as engine:
        prompt = RecoveryTemplate().render(engine.tokenizer, "A b.", "a b.")
        out = engine.generate(
            [prompt], SamplingConfig(temperature=0, max_new_tokens=4), adapters=[None, "ex"]
        )
    assert set(out) == {None, "ex"}


def test_bad_training_csv_is_one_line_error(base, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,original_text,rewritten_text\n1,a,b\n")
    args = ["train", "--model", str(base), "--train", str(bad), "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "rewrite_prompt" in err and "\n" not in err
    bad.write_text("id,original_text,rewritten_text,rewrite_prompt\n1,a,b,\n2,c,d,Do it.\n")
    with pytest.raises(RecoverlibError, match="empty text or rewrite_prompt"):
        train_adapter(base, bad, tmp_path / "o")
    with pytest.raises(RecoverlibError, match="prime"):
        train_adapter(base, [r for r in generate(TaskConfig(rows=5, eval_rows=1))["train"]], tmp_path / "o",
                      config=TrainConfig(prime="Zebra"))
    with pytest.raises(RecoverlibError, match="targets"):
        TrainConfig(targets="everything")


def test_missing_trl_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)
    with pytest.raises(RecoverlibError, match="pip install trl"):
        import_trl()


def test_qlora_without_cuda_is_refused():
    import torch

    from recoverlib.training.lora import resolve_plan

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert resolve_plan("auto") is False
    with pytest.raises(RecoverlibError, match="CUDA"):
        resolve_plan("bnb-nf4")


@pytest.mark.gpu
def test_qlora_on_cuda(base, task, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("bitsandbytes")
    from transformers import AutoTokenizer

    from recoverlib.engines import EngineConfig, SamplingConfig, make_engine

    config = TrainConfig(epochs=1, lr=5e-3, batch_size=16, score_rows=4, plan="bnb-nf4", max_rows=16)
    result = train_adapter(base, task / "train.csv", tmp_path / "q", task / "validation.csv", config)
    assert len(result.history) == 1 and "val_score" in result.history[0]
    prompts = [RecoveryTemplate().render(AutoTokenizer.from_pretrained(base), "a b", "B A")]
    with make_engine("hf", base, {"q": result.adapter}, EngineConfig()) as engine:
        out = engine.generate(prompts, SamplingConfig(temperature=0, max_new_tokens=8), [None, "q"])
    assert out["q"] != out[None]  # the QLoRA adapter changes what the base says


def test_train_cli_writes_a_peft_folder(base, task, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", "--model", str(base), "--train", str(task / "train.csv"), "--validation",
            str(task / "validation.csv"), "--out", str(out), "--epochs", "1", "--max-rows", "16",
            "--score-rows", "0", "--rank", "2", "--lr", "1e-3"]
    assert main(args) == 0
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert "best epoch 1" in capsys.readouterr().out


@pytest.mark.slow
def test_train_killed_after_an_epoch_resumes_to_the_same_adapter(base, task, tmp_path):
    """SIGKILL once the first epoch's checkpoint is whole; ``train --resume`` finishes the run as if never
    stopped."""
    import os
    import signal
    import subprocess
    import time

    from safetensors.torch import load_file

    def cmd(out, *extra):
        return [
            sys.executable,
            "-m",
            "recoverlib.cli",
            "train",
            "--model",
            str(base),
            "--train",
            str(task / "train.csv"),
            "--validation",
            str(task / "validation.csv"),
            "--out",
            str(out),
            "--epochs",
            "3",
            "--lr",
            "5e-3",
            "--batch-size",
            "8",
            "--score-rows",
            "4",
            "--rank",
            "4",
            "--plan",
            "none",
            *extra,
        ]

    whole = subprocess.run(cmd(tmp_path / "whole"), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-2000:]
    proc = subprocess.Popen(cmd(tmp_path / "cut"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not list((tmp_path / "cut" / ".checkpoints").glob("checkpoint-*/recoverlib_selector.json")):
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "adapter_config.json").exists()
    again = subprocess.run(cmd(tmp_path / "cut"), capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr  # an unfinished run is not silently restarted
    resumed = subprocess.run(cmd(tmp_path / "cut", "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming training from" in resumed.stderr
    assert not (tmp_path / "cut" / ".checkpoints").exists()
    meta = [json.loads((tmp_path / d / ADAPTER_META).read_text()) for d in ("whole", "cut")]
    assert [h["epoch"] for h in meta[1]["history"]] == [1, 2, 3]
    assert meta[0]["best_epoch"] == meta[1]["best_epoch"]
    a, b = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("whole", "cut"))
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-5 for k in a)


@pytest.mark.slow  # ~40 s each
@pytest.mark.parametrize("family", ["gemma", "qwen2"])
def test_train_cli_on_a_dense_base(family, tiny_dense, task, tmp_path, capsys):
    """A LoRA on attention and the MLP of a dense base (Gemma: tied head, chat template without a system
    role), through the command line; it loads and changes what the base says."""
    from recoverlib.adapters import read_adapter
    from recoverlib.engines import EngineConfig, SamplingConfig, make_engine

    base, out = tiny_dense(family) / "model", tmp_path / "ad"
    args = ["train", "--model", str(base), "--train", str(task / "train.csv"), "--out", str(out),
            "--epochs", "1", "--max-rows", "16", "--batch-size", "4", "--score-rows", "0", "--rank", "4",
            "--lr", "5e-2", "--targets", "attention+mlp"]
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    info = read_adapter("d", out)
    assert {m.rsplit(".", 1)[-1] for m in info.target_modules} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }
    with make_engine("hf", base, {"d": out}, EngineConfig(dtype="float32")) as engine:
        prompt = RecoveryTemplate().render(engine.tokenizer, "The cat sat.", "THE CAT SAT.")
        got = engine.generate([prompt], SamplingConfig(temperature=0, max_new_tokens=6), adapters=[None, "d"])
    assert got["d"] != got[None]


def test_lora_targets_the_base_lacks_are_one_line(tiny_dense, base, task, tmp_path, capsys):
    for model, targets, want in ((tiny_dense("gemma") / "model", "attention+experts", "use attention+mlp"),
                                 (base, "attention+mlp", "use attention+experts")):
        args = ["train", "--model", str(model), "--train", str(task / "train.csv"), "--out",
                str(tmp_path / targets), "--epochs", "1", "--targets", targets]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(want) and len(err.splitlines()) == 1, err
