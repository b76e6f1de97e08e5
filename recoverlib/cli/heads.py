"""``recoverlib train --head verifier|embedding``: a learned head on the base (see
:mod:`recoverlib.heads.model`), trained on the training rows (and, for a verifier, the model's own samples on
them)."""

from __future__ import annotations

from recoverlib.combine.context import CombineContext
from recoverlib.errors import RecoverlibError
from recoverlib.heads.model import HEAD_META
from recoverlib.io import read_samples
from recoverlib.metric import Scorer
from recoverlib.model_folder import require_model_folder
from recoverlib.output_paths import check_output_folder
from recoverlib.training.head_data import embedding_examples, verifier_examples
from recoverlib.training.heads import HeadTrainConfig, train_head
from recoverlib.training.rows import load_training_rows, subset


def cmd_train_head(args) -> int:
    config = HeadTrainConfig(
        kind=args.head,
        rank=args.rank,
        alpha=args.alpha,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        template=args.template,
        seed=args.seed,
    )
    if args.head == "verifier" and args.samples_file is None:
        raise RecoverlibError(
            "--head verifier needs --samples-file: the model's samples on the --train rows "
            "(recoverlib predict --samples-file on that CSV)"
        )
    require_model_folder(args.model)
    inputs = [("--model", args.model), ("--train", args.train), ("--samples-file", args.samples_file)]
    check_output_folder(args.out, [(k, v) for k, v in inputs if v is not None], marker=HEAD_META)
    rows = subset(load_training_rows(args.train), args.max_rows, args.seed)
    scorer = Scorer(args.embedder, progress=False)
    if args.head == "verifier":
        examples = verifier_examples(rows, read_samples(args.samples_file), CombineContext(scorer))
    else:
        examples = embedding_examples(rows, scorer)
    result = train_head(args.model, examples, args.out, args.embedder, config)
    for h in result.history:
        print(", ".join(f"{k} {v}" for k, v in h.items()), file=args.stdout)
    print(
        f"wrote {result.folder} ({args.head} head, best epoch {result.best_epoch}, {result.examples} "
        f"examples, {result.seconds:.0f} s)",
        file=args.stdout,
    )
    return 0
