"""``movierec train``'s flags, and the ``TrainerClient.train`` options they ask for.

Why apart from ``cli.py``: ``train`` has more flags than every other command
together (data, one per hyperparameter, evaluation and publishing), and turning
them into the client's :class:`~clients.types.TrainOptions` is a job of its own;
``cli.py`` keeps the parser's shape, the call and its output. The flags follow
the contract: one per ``Hyperparameters`` field of trainer.proto, and the model
kinds, holdouts and MovieLens releases of ``movierec.v1.vocabulary`` in the help.
"""

from __future__ import annotations

import argparse

from movierec.v1 import trainer_pb2
from movierec.v1.vocabulary import DATASET_NAMES, HOLDOUTS, MODEL_KINDS

from .errors import ConfigurationError
from .types import HYPERPARAMETERS, TrainOptions

_HYPERPARAMETER_FIELDS = trainer_pb2.Hyperparameters.DESCRIPTOR.fields_by_name
_HYPERPARAMETER_HELP = {
    "patience": "early-stopping patience in epochs",
    "validation_size": "ratings per user carved from training data for early stopping",
    "l2_lambda": "ease kinds: ridge penalty",
    "blend_weight": "blended kinds: share of the neural scores",
}


def positive_int(text: str) -> int:
    """argparse type of a count (epochs, workers, ...; the CLI's other commands use it for k and limits too)."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


# argparse names a type in its error for text that is no number at all ("invalid _positive_int value: 'abc'"):
# the name the CLI has always printed, from when this lived in cli.py.
positive_int.__name__ = "_positive_int"


def add_train_options(train: argparse.ArgumentParser) -> None:
    train.add_argument("--model", required=True, help=f"model kind, e.g. {', '.join(MODEL_KINDS)}")
    data = train.add_argument_group("data (paths relative to the trainer's data root; default MovieLens 100K)")
    data.add_argument("--ratings", metavar="FILE",
                      help="ratings in any GroupLens layout: u.data, ratings.dat or ratings.csv")
    data.add_argument("--items", metavar="FILE",
                      help="movies in any GroupLens layout: u.item, movies.dat or movies.csv")
    data.add_argument("--dataset", metavar="NAME",
                      help=f"a MovieLens release instead of files: {', '.join(DATASET_NAMES)}")
    data.add_argument("--interactions", action="store_true",
                      help="add the interactions recorded in the trainer's event store to this data "
                           "(the latest per user and movie wins; movies the data does not list are left out)")
    data.add_argument("--interactions-up-to", type=positive_int, metavar="POSITION",
                      help="with --interactions: only those up to this store position (default: the store's "
                           "latest when the job starts)")
    hp = train.add_argument_group("training (unset = the model kind's default)")
    hp.add_argument("--epochs", type=positive_int, help="at most N epochs (early stopping may end sooner)")
    for name in HYPERPARAMETERS:  # one flag per proto field, so new fields need no CLI change
        is_int = _HYPERPARAMETER_FIELDS[name].type == _HYPERPARAMETER_FIELDS[name].TYPE_INT32
        hp.add_argument("--" + name.replace("_", "-"), dest=name, type=positive_int if is_int else float,
                        help=_HYPERPARAMETER_HELP.get(name))
    hp.add_argument("--seed", type=positive_int)
    hp.add_argument("--workers", type=positive_int,
                    help="data-parallel workers on Ray (at most the trainer's --workers; default: that number)")
    ev = train.add_argument_group("evaluation and publishing")
    ev.add_argument("--holdout", help=f"held-out split: {', '.join(HOLDOUTS)} (default random)")
    ev.add_argument("--holdout-size", type=positive_int, help="ratings held out per user (default 10)")
    ev.add_argument("--min-recall", type=float, metavar="X", help="quality gate: minimum validation Recall@10")
    ev.add_argument("--require-no-regression", action="store_true", help="refuse a model worse than the served one")
    ev.add_argument("--require-beating-baseline", action="store_true",
                    help="refuse a model whose validation Recall@10 is below neighbourhood popularity's")
    ev.add_argument("--no-quality-gate", action="store_true", help="publish regardless of the default floor")
    ev.add_argument("--no-refit", action="store_true",
                    help="publish the evaluated model itself instead of training it again on all the data")
    train.add_argument("--idempotency-key", metavar="KEY", help="resubmitting the same key returns the same job")
    train.add_argument("--watch", action="store_true", help="follow the job with a progress bar until it ends")


def train_options(args: argparse.Namespace) -> TrainOptions:
    """What ``TrainerClient.train(args.model, **options)`` is asked for; an unset flag stays ``None`` (the
    trainer's default). Raises ConfigurationError for flags that only make sense together."""
    if args.interactions_up_to is not None and not args.interactions:
        raise ConfigurationError("--interactions-up-to goes with --interactions")
    hyperparameters = {name: getattr(args, name) for name in HYPERPARAMETERS if getattr(args, name) is not None}
    return TrainOptions(
        epochs=args.epochs,
        ratings_path=args.ratings,
        items_path=args.items,
        dataset=args.dataset,
        hyperparameters=hyperparameters,
        holdout=args.holdout,
        holdout_size=args.holdout_size,
        seed=args.seed,
        idempotency_key=args.idempotency_key,
        min_validation_recall_at_10=args.min_recall,
        require_no_regression=args.require_no_regression,
        require_beating_baseline=args.require_beating_baseline,
        workers=args.workers,
        quality_gate_disabled=args.no_quality_gate,
        refit=False if args.no_refit else None,
        interactions=args.interactions,
        interactions_up_to=args.interactions_up_to,
    )
