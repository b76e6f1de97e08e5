"""``recoverlib make-task`` (the synthetic recovery task) and ``recoverlib train`` (a LoRA adapter through
TRL, or with ``--head`` a learned verifier or embedding head)."""

from __future__ import annotations

from pathlib import Path

from recoverlib.cli.heads import cmd_train_head
from recoverlib.cli.options import add_embedder, add_out, add_samples_file, add_template, old_name
from recoverlib.cli.tiny import add_positional_out, out_folder
from recoverlib.errors import RecoverlibError
from recoverlib.heads.model import KINDS
from recoverlib.model_folder import require_model_folder
from recoverlib.output_paths import check_output_folder
from recoverlib.synthetic.generator import TaskConfig, write_task
from recoverlib.training.checkpoints import CHECKPOINTS
from recoverlib.training.lora import PLANS, TARGETS, TrainConfig, train_adapter


def cmd_make_task(args) -> int:
    config = TaskConfig(rows=args.rows, eval_rows=args.eval_rows, ambiguity=args.ambiguity, seed=args.seed)
    check_output_folder(out_folder(args), [], marker="task.json")
    out = write_task(out_folder(args), config)
    print(f"wrote {out}/train.csv ({config.rows} rows), validation.csv, test.csv and test_truth.csv "
          f"({config.eval_rows} rows each)", file=args.stdout)
    return 0


def cmd_train(args) -> int:
    if args.head:
        return cmd_train_head(args)
    config = TrainConfig(
        rank=args.rank,
        alpha=args.alpha,
        targets=args.targets,
        prime=args.prime,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        max_rows=args.max_rows,
        score_rows=args.score_rows,
        embedder=args.embedder,
        plan={"4bit": "bnb-nf4"}.get(args.plan, args.plan),
        template=args.template,
        seed=args.seed,
    )
    require_model_folder(args.model)
    inputs = [("--model", args.model), ("--train", args.train), ("--validation", args.validation)]
    check_output_folder(args.out, inputs, marker=("adapter_config.json", CHECKPOINTS))
    if (args.out / CHECKPOINTS).exists() and not args.resume:
        raise RecoverlibError(f"{args.out} holds an unfinished training run: pass --resume to continue it,"
                              f" or remove {args.out / CHECKPOINTS}")
    result = train_adapter(args.model, args.train, args.out, args.validation, config, resume=args.resume)
    for h in result.history:
        print(
            "epoch {epoch}: val_loss {val_loss}, val_score {score}".format(
                score=h.get("val_score", "-"), **h
            ),
            file=args.stdout,
        )
    print(
        f"wrote {result.adapter} (best epoch {result.best_epoch}, {result.train_rows} rows, "
        f"{result.seconds:.0f} s)",
        file=args.stdout,
    )
    return 0


def add_commands(sub) -> None:
    """Register ``make-task`` and ``train`` (defaults read from TaskConfig and TrainConfig)."""

    task, tc = sub.add_parser("make-task", help="write a synthetic prompt-recovery task"), TaskConfig()
    add_positional_out(task)
    task.add_argument("--rows", type=int, default=tc.rows, help="train rows (default %(default)s)")
    task.add_argument("--eval-rows", type=int, default=tc.eval_rows, help="validation and test rows each")
    task.add_argument("--ambiguity", type=float, default=tc.ambiguity,
                      help="0-1: weight of alias instructions that share a rewrite (default %(default)s)")
    task.add_argument("--seed", type=int, default=tc.seed)
    task.set_defaults(func=cmd_make_task)

    cfg = TrainConfig()
    train = sub.add_parser("train", help="fine-tune a LoRA adapter (QLoRA on CUDA) for prompt recovery")
    train.add_argument("--model", type=Path, required=True, help="base HF model folder")
    train.add_argument(
        "--train", type=Path, required=True, help="CSV with id, original_text, rewritten_text, rewrite_prompt"
    )
    train.add_argument("--validation", type=Path, help="CSV like --train; picks the best epoch")
    add_out(train, "adapter folder to write")
    train.add_argument("--rank", type=int, default=cfg.rank)
    train.add_argument("--alpha", type=float, default=cfg.alpha)
    train.add_argument("--targets", choices=TARGETS, default=cfg.targets)
    train.add_argument("--prime", default=cfg.prime, help='fixed opening of every prediction, e.g. "Rewrite"')
    train.add_argument("--epochs", type=int, default=cfg.epochs)
    train.add_argument("--lr", type=float, default=cfg.lr)
    train.add_argument("--batch-size", type=int, default=cfg.batch_size)
    train.add_argument("--max-rows", type=int, default=cfg.max_rows, help="train on a seeded subset")
    train.add_argument("--score-rows", type=int, default=cfg.score_rows,
                       help="validation rows scored per epoch (0: choose the epoch by loss)")
    add_embedder(train)
    train.set_defaults(embedder=cfg.embedder)
    train.add_argument("--plan", choices=PLANS, default=cfg.plan,
                       help="base precision while training: bnb-nf4 (QLoRA, CUDA), none (16-bit) or auto")
    old_name(train, "--quantize", "--plan", "plan", choices=("auto", "none", "4bit"))
    add_template(train)
    train.add_argument("--seed", type=int, default=cfg.seed)
    train.add_argument(
        "--resume", action="store_true", help="continue the run checkpointed under --out/.checkpoints"
    )
    train.add_argument("--head", choices=KINDS, help="train a learned head instead of a recovery adapter: "
                       "a verifier (scores candidates; needs --samples-file) or an embedding regressor")
    add_samples_file(train, "verifier: the model's samples on the --train rows (predict --samples-file)",
                     required=False, old=())
    train.set_defaults(func=cmd_train)
