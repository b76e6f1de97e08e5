"""LoRA fine-tuning for prompt recovery through TRL's SFTTrainer (QLoRA on a CUDA machine).

Rows are rendered by :class:`RecoveryTemplate` exactly as the engines render them; the loss covers the
completion only (the rewrite prompt after the response prefix, or after the prime, plus eos). After every
epoch the validation loss and a greedy validation score are taken, and the best epoch's adapter is saved:
a plain PEFT folder both engines load as it is, plus ``recoverlib_adapter.json`` (prime, history).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from recoverlib.adapters import ADAPTER_META  # the engines read the prime from it
from recoverlib.errors import RecoverlibError
from recoverlib.metric import Scorer
from recoverlib.model_folder import read_model_config
from recoverlib.prompt import TEMPLATE_KINDS, RecoveryTemplate
from recoverlib.runtime import kept_environ
from recoverlib.training.checkpoints import (
    CHECKPOINTS,
    checkpoint_callback,
    last_checkpoint,
    restore_selector,
)
from recoverlib.training.evaluate import greedy_predictions
from recoverlib.training.rows import dedicated_pad, rows_of, subset, to_dataset

log = logging.getLogger("recoverlib")

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
EXPERT_PARAMETERS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")  # a dense model's MLP (Mistral, Llama, Qwen2, Gemma)
TARGETS = ("attention", "attention+experts", "attention+mlp")
# The base model precision while training: a bnb-nf4 base (QLoRA, CUDA only), 16-bit, or chosen by the
# machine.
PLANS = ("auto", "none", "bnb-nf4")


@dataclass(frozen=True)
class TrainConfig:
    """LoRA settings. Defaults suit a real Mixtral; the tiny model wants a larger ``lr`` (about 2e-3)."""

    rank: int = 8
    alpha: float = 16.0
    # or "attention+experts" (LoRA on a MoE's fused expert weights too), "attention+mlp" (a dense MLP too)
    targets: str = "attention"
    prime: str = ""  # fixed opening of every completion (e.g. "Rewrite"); only rows starting with it are used
    epochs: int = 2
    lr: float = 2e-4
    batch_size: int = 16
    dropout: float = 0.0  # must be 0 with experts (PEFT's parameter LoRA has no dropout)
    max_length: int = 512  # tokens per training sequence; prompts are fitted to leave room for the completion
    max_rows: int | None = None  # train on a seeded subset of at most this many rows
    # validation rows scored by greedy generation each epoch (0: pick the epoch by loss)
    score_rows: int = 200
    embedder: str = "minilm"  # scorer for the per-epoch score
    plan: str = "auto"  # "auto": a bnb-nf4 base (QLoRA) when CUDA and bitsandbytes are there
    template: str = "auto"  # recovery prompt kind: chat, plain, or auto (chat where the tokenizer has one)
    seed: int = 0

    def __post_init__(self):
        if self.targets not in TARGETS:
            raise RecoverlibError(f"targets must be one of {', '.join(TARGETS)} (got {self.targets!r})")
        if self.plan not in PLANS:
            raise RecoverlibError(f"training plan must be one of {', '.join(PLANS)} (got {self.plan!r})")
        if self.template not in TEMPLATE_KINDS:
            raise RecoverlibError(
                f"template must be one of {', '.join(TEMPLATE_KINDS)} (got {self.template!r})"
            )
        bad = [
            f"{name} {value}"
            for name, value, ok in (
                ("rank", self.rank, self.rank >= 1),
                ("alpha", self.alpha, self.alpha > 0),
                ("epochs", self.epochs, self.epochs >= 1),
                ("lr", self.lr, self.lr > 0),
                ("batch_size", self.batch_size, self.batch_size >= 1),
                ("max_length", self.max_length, self.max_length >= 16),
                ("max_rows", self.max_rows, self.max_rows is None or self.max_rows >= 1),
                ("score_rows", self.score_rows, self.score_rows >= 0),
                ("dropout", self.dropout, 0 <= self.dropout < 1),
            )
            if not ok
        ]
        if bad:
            raise RecoverlibError(
                f"bad training settings: {', '.join(bad)} (counts >= 1, score_rows >= 0, lr and alpha > 0)"
            )
        if self.experts and self.dropout:
            raise RecoverlibError("LoRA on experts needs dropout 0 (PEFT's ParamWrapper has no dropout)")

    @property
    def experts(self) -> bool:
        return self.targets == "attention+experts"


@dataclass(frozen=True)
class TrainResult:
    adapter: Path
    best_epoch: int
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, val_loss, val_score
    train_rows: int = 0
    seconds: float = 0.0


def import_trl():
    """TRL, imported without the vLLM log level it sets for the whole process on import."""
    try:
        import datasets  # noqa: F401

        with kept_environ("VLLM_LOGGING_LEVEL"):
            import trl
    except ImportError as err:
        raise RecoverlibError(
            f"training needs TRL ({err.name} missing): pip install trl==1.16.0 datasets"
        ) from None
    return trl


def resolve_plan(plan: str) -> bool:
    """Whether to load the base in 4 bits (QLoRA) for training ``plan`` (auto, none, bnb-nf4)."""
    import torch

    cuda = torch.cuda.is_available()
    if plan == "bnb-nf4" and not cuda:
        raise RecoverlibError("QLoRA (--plan bnb-nf4) needs a CUDA GPU; use --plan none on this machine")
    if plan != "auto":
        return plan == "bnb-nf4"
    if cuda and not _has_bitsandbytes():
        log.warning("training plan auto: CUDA is here but bitsandbytes is not, so the base trains in bf16"
                    " (pip install bitsandbytes for QLoRA)")
    return cuda and _has_bitsandbytes()


def _has_bitsandbytes() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


def load_base(model_path: str | Path, four_bit: bool):
    """The base for training: fp32 on CPU; on CUDA bf16, or NF4 4-bit (router and lm_head kept 16-bit)."""
    import torch
    from transformers import AutoModelForCausalLM

    if not four_bit:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, use_safetensors=True)
        return model.to("cuda") if torch.cuda.is_available() else model
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    bnb = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True, llm_int8_skip_modules=["gate", "lm_head"],
    )
    model = AutoModelForCausalLM.from_pretrained(model_path, quantization_config=bnb, device_map={"": 0},
                                                 use_safetensors=True)
    return prepare_model_for_kbit_training(model)


def lora_config(config: TrainConfig):
    from peft import LoraConfig

    extra = {"target_parameters": list(EXPERT_PARAMETERS)} if config.experts else {}
    modules = ATTENTION_MODULES + (MLP_MODULES if config.targets == "attention+mlp" else ())
    return LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(modules), task_type="CAUSAL_LM", **extra)


def check_targets(config: TrainConfig, model_path: str | Path) -> None:
    """LoRA targets the base has: expert weights on a mixture of experts, an MLP on a dense model; one line
    otherwise (PEFT would fail deep inside, or find no module to wrap)."""
    cfg = read_model_config(model_path)
    moe = bool(cfg.get("num_local_experts") or cfg.get("num_experts"))
    if config.experts and not moe:
        raise RecoverlibError(f"--targets attention+experts: {model_path} ({cfg.get('model_type')}) is a"
                              " dense model with no experts; use attention+mlp")
    if config.targets == "attention+mlp" and moe:
        raise RecoverlibError(f"--targets attention+mlp: {model_path} ({cfg.get('model_type')}) is a mixture"
                              " of experts; use attention+experts")


@contextlib.contextmanager
def preserved_rng():
    """The Trainer seeds the global RNGs; restore them afterwards so callers' randomness is untouched."""
    import numpy as np
    import torch

    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(py)
    np.random.set_state(npy)


class _BestEpoch:
    """Per-epoch validation (loss from the Trainer, score by greedy generation) keeping the best LoRA
    weights."""

    def __init__(self, tokenizer, val_rows, config: TrainConfig, template: RecoveryTemplate):
        self.tokenizer, self.config, self.template = tokenizer, config, template
        self.rows = subset(val_rows, config.score_rows, config.seed) if config.score_rows else []
        self.scorer = None
        self.history: list[dict] = []
        self.best_key, self.best_state, self.best_epoch = None, None, 0

    def evaluate(self, model, epoch: int, val_loss: float | None) -> None:
        from peft import get_peft_model_state_dict

        entry = {"epoch": epoch, "val_loss": val_loss}
        if self.rows:
            entry["val_score"] = self._score(model)
        self.history.append(entry)
        key = entry.get("val_score", -(val_loss if val_loss is not None else 0.0))
        if self.best_key is None or key > self.best_key:
            self.best_key, self.best_epoch = key, epoch
            self.best_state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        log.info("epoch %d: %s", epoch, entry)

    def _score(self, model) -> float:
        self.scorer = self.scorer or Scorer(self.config.embedder, progress=False)
        preds = greedy_predictions(
            model,
            self.tokenizer,
            [(r.original_text, r.rewritten_text) for r in self.rows],
            self.template,
            self.config.prime,
            max_prompt_tokens=self.config.max_length - 64,
        )
        return self.scorer.score(preds, [r.rewrite_prompt for r in self.rows])

    def callback(self):
        from transformers import TrainerCallback

        selector = self

        class Callback(TrainerCallback):
            def on_evaluate(self, args, state, control, metrics=None, model=None, **kw):
                selector.evaluate(model, round(state.epoch or 0), (metrics or {}).get("eval_loss"))

        return Callback()


def sft_config(config: TrainConfig, work_dir: str, has_validation: bool, four_bit: bool):
    import torch

    SFTConfig = import_trl().SFTConfig

    # per_device_* sizes, bf16 and use_cpu follow the device; a checkpoint per epoch (the last two kept) for
    # resume; the best epoch's weights are kept by _BestEpoch (and saved beside each checkpoint)
    return SFTConfig(
        output_dir=work_dir, num_train_epochs=config.epochs, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=max(config.batch_size, 32), learning_rate=config.lr,
        lr_scheduler_type="cosine", warmup_steps=0.05, weight_decay=0.0, max_grad_norm=1.0,
        completion_only_loss=True, max_length=config.max_length, train_sampling_strategy="group_by_length",
        eval_strategy="epoch" if has_validation else "no", save_strategy="epoch", save_total_limit=2,
        logging_strategy="epoch",
        use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(), report_to="none",
        seed=config.seed, data_seed=config.seed, disable_tqdm=False, dataloader_num_workers=0,
        gradient_checkpointing=four_bit,
    )


def train_adapter(
    model_path: str | Path,
    train,
    out_dir: str | Path,
    validation=None,
    config: TrainConfig | None = None,
    base_name: str | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train a LoRA adapter on ``model_path`` and save the best epoch's as a PEFT folder in ``out_dir``.

    ``train``/``validation``: CSV paths or lists of rows with ``original_text, rewritten_text,
    rewrite_prompt``. With ``config.prime`` only rows whose prompt starts with it are used. Returns the
    adapter folder, the best epoch (by validation score, else loss, else the last) and the per-epoch history.
    ``base_name`` is recorded as the adapter's base (default: ``model_path``). Each epoch is checkpointed
    under ``out_dir/.checkpoints`` (see :mod:`recoverlib.training.checkpoints`); ``resume`` continues from the
    newest whole one (the same data and config), else training starts afresh. The checkpoints go once the
    adapter is saved.
    """
    import shutil

    from peft import set_peft_model_state_dict

    config = config or TrainConfig()
    start = time.perf_counter()
    train_rows = subset(rows_of(train, config.prime, "training"), config.max_rows, config.seed)
    val_rows = rows_of(validation, config.prime, "validation") if validation is not None else []
    work = Path(out_dir) / CHECKPOINTS
    start_from = last_checkpoint(work) if resume else None
    if resume and start_from is None:
        log.warning("no whole checkpoint under %s; training from the start", work)
    if start_from is None:
        shutil.rmtree(work, ignore_errors=True)
    with preserved_rng():
        trainer, selector = build_trainer(model_path, train_rows, val_rows, config, str(work))
        if start_from is not None:
            restore_selector(start_from, selector)
            log.warning("resuming training from %s (epoch %s done)", start_from, len(selector.history) or "?")
        trainer.train(resume_from_checkpoint=str(start_from) if start_from is not None else None)
        model = trainer.model
        if selector.best_state is not None:
            set_peft_model_state_dict(model, selector.best_state)
        else:
            selector.best_epoch = config.epochs
    base_name = str(model_path) if base_name is None else base_name
    result = _save(
        model, base_name, Path(out_dir), config, selector, len(train_rows), time.perf_counter() - start
    )
    shutil.rmtree(work, ignore_errors=True)
    return result


def build_trainer(model_path: str | Path, train_rows, val_rows, config: TrainConfig, work_dir: str):
    """The configured ``SFTTrainer`` (datasets tokenized, labels built) and its best-epoch selector."""
    SFTTrainer = import_trl().SFTTrainer
    from transformers import AutoTokenizer

    check_targets(config, model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dedicated_pad(tokenizer)
    template = RecoveryTemplate(kind=config.template).for_tokenizer(
        tokenizer, f"the tokenizer of {model_path}"
    )
    four_bit = resolve_plan(config.plan)
    selector = _BestEpoch(tokenizer, val_rows, config, template)
    trainer = SFTTrainer(
        model=load_base(model_path, four_bit),
        args=sft_config(config, work_dir, bool(val_rows), four_bit),
        train_dataset=to_dataset(tokenizer, train_rows, template, config.prime, config.max_length),
        eval_dataset=to_dataset(tokenizer, val_rows, template, config.prime, config.max_length)
        if val_rows
        else None,
        processing_class=tokenizer,
        peft_config=lora_config(config),
        callbacks=[selector.callback(), checkpoint_callback(selector)],
    )
    _bars_without_metric_lines(trainer)
    return trainer, selector


def _bars_without_metric_lines(trainer) -> None:
    """Keep the Trainer's progress bars, but send its per-epoch metric dicts to our log (``-v``) instead of
    printing them between the bars."""
    from transformers.trainer_callback import ProgressCallback

    class BarsOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            log.info("training: %s", {k: v for k, v in (logs or {}).items() if k != "total_flos"})

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(BarsOnly)


def _save(model, base_name: str, out_dir: Path, config: TrainConfig, selector: _BestEpoch, n_rows: int,
          seconds: float) -> TrainResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.peft_config["default"].base_model_name_or_path = base_name
    model.save_pretrained(out_dir, safe_serialization=True)
    info = {"prime": config.prime, "template": selector.template.kind, "best_epoch": selector.best_epoch,
            "history": selector.history, "train_rows": n_rows, "config": asdict(config)}
    (out_dir / ADAPTER_META).write_text(json.dumps(info, indent=1) + "\n")
    return TrainResult(out_dir, selector.best_epoch, selector.history, n_rows, round(seconds, 1))
