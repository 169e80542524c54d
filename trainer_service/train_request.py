"""A ``TrainRequest``: read from its proto, checked, and resolved into what a job runs.

Everything a caller must fix that is known without reading a dataset is
refused here, at the Train call, with ``InvalidRequest`` (INVALID_ARGUMENT):
lengths, names, ranges, paths confined to the data root, file sizes, and a
named release's catalogue for a kind that cannot hold it. What only the data
can tell (a malformed line, a file's catalogue) is the job's to find, and
fails the job with the same kind of message. The servicer only translates
and maps errors; the rules live here.
"""

from __future__ import annotations

from movierec.v1 import trainer_pb2
from movierec.v1.vocabulary import HOLDOUTS, PREDEFINED_SPLITS
from trainer_service import data_root
from trainer_service.config import TrainerConfig
from trainer_service.errors import InteractionsOff, InvalidRequest
from trainer_service.hyperparams import Hyperparameters
from trainer_service.jobs import TrainSpec
from trainer_service.releases import ML_100K, release_named
from trainer_service.training import check_catalogue, kind_named, resolve_hyperparameters

MAX_KEY_LENGTH = 128
MAX_NAME_LENGTH = 64
MAX_PATH_LENGTH = 1024
MAX_HOLDOUT_SIZE = 100
DEFAULT_SEED = 42


def spec_from_proto(request: trainer_pb2.TrainRequest) -> TrainSpec:
    """The request as a ``TrainSpec``, with protobuf's unset fields as their defaults; refuses oversized fields."""
    if len(request.idempotency_key) > MAX_KEY_LENGTH:
        raise InvalidRequest(f"idempotency_key is longer than {MAX_KEY_LENGTH} characters")
    for name in ("ratings_path", "items_path"):
        if len(getattr(request.dataset, name)) > MAX_PATH_LENGTH:
            raise InvalidRequest(f"dataset.{name} is longer than {MAX_PATH_LENGTH} characters")
    if len(request.dataset.name) > MAX_NAME_LENGTH:
        raise InvalidRequest(f"dataset.name is longer than {MAX_NAME_LENGTH} characters")
    if not request.model:
        raise InvalidRequest("model is required, e.g. 'two_tower'")
    for name, value in (("model", request.model), ("evaluation.holdout", request.evaluation.holdout)):
        if len(value) > MAX_NAME_LENGTH:
            raise InvalidRequest(f"{name} is longer than {MAX_NAME_LENGTH} characters")
    overrides = {field.name: value for field, value in request.hyperparameters.ListFields()}
    gate = request.quality_gate
    return TrainSpec(
        model=request.model,
        ratings_path=request.dataset.ratings_path,
        items_path=request.dataset.items_path,
        dataset_name=request.dataset.name,
        epochs=request.epochs,
        hyperparameters=overrides,
        holdout=request.evaluation.holdout or "random",
        holdout_size=request.evaluation.holdout_size or 10,
        refit=request.evaluation.refit if request.evaluation.HasField("refit") else True,
        seed=request.seed,
        idempotency_key=request.idempotency_key,
        min_validation_recall_at_10=gate.min_validation_recall_at_10,
        require_no_regression=gate.require_no_regression,
        require_beating_baseline=gate.require_beating_baseline,
        quality_gate_disabled=gate.disabled,
        workers=request.workers,
        interactions=request.dataset.interactions.include,
        interactions_up_to=request.dataset.interactions.up_to,
    )


def spec_to_proto(spec: TrainSpec) -> trainer_pb2.TrainRequest:
    """The request a job was given, as a job's record shows it."""
    return trainer_pb2.TrainRequest(
        model=spec.model,
        dataset=trainer_pb2.DatasetSpec(ratings_path=spec.ratings_path, items_path=spec.items_path,
                                        name=spec.dataset_name,
                                        interactions=trainer_pb2.InteractionsSpec(include=spec.interactions,
                                                                                  up_to=spec.interactions_up_to)),
        epochs=spec.epochs,
        # The spec holds only fields the request set, by their proto names; the stub types each one.
        hyperparameters=trainer_pb2.Hyperparameters(**spec.hyperparameters),  # type: ignore[arg-type]
        evaluation=trainer_pb2.EvaluationSpec(holdout=spec.holdout, holdout_size=spec.holdout_size,
                                              refit=spec.refit),
        seed=spec.seed,
        idempotency_key=spec.idempotency_key,
        quality_gate=trainer_pb2.QualityGate(
            min_validation_recall_at_10=spec.min_validation_recall_at_10,
            require_no_regression=spec.require_no_regression,
            require_beating_baseline=spec.require_beating_baseline,
            disabled=spec.quality_gate_disabled,
        ),
        workers=spec.workers,
    )


def hyperparameters_for(spec: TrainSpec) -> Hyperparameters:
    """The kind's defaults with the request's overrides (``epochs`` may be given on its own)."""
    overrides = dict(spec.hyperparameters)
    if spec.epochs:
        overrides["epochs"] = spec.epochs
    return resolve_hyperparameters(spec.model, overrides)


def seed_for(spec: TrainSpec) -> int:
    """The request's seed; 0 (unset) means the trainer's default, so an unseeded request is still repeatable."""
    return spec.seed or DEFAULT_SEED


def validate_spec(spec: TrainSpec, config: TrainerConfig) -> None:
    """Raises InvalidRequest for anything a caller must fix that is known without reading a dataset.

    Runs on the Train call's thread, so it only looks at the request and
    ``stat``s files: names, ranges, paths confined to the data root, file
    sizes. A dataset's content (malformed lines, its catalogue's size for a
    closed-form kind) is the job's to read, and fails the job with the same
    message (see ``pipeline.Job.load``); a named release's catalogue size is
    known, so a kind that cannot hold it is refused here.
    """
    kind = kind_named(spec.model)
    hyperparameters_for(spec)
    if spec.holdout not in HOLDOUTS:
        raise InvalidRequest(f"unknown holdout {spec.holdout!r}; choose one of: {', '.join(HOLDOUTS)}")
    if not 1 <= spec.holdout_size <= MAX_HOLDOUT_SIZE:
        raise InvalidRequest(f"holdout_size must be between 1 and {MAX_HOLDOUT_SIZE}, got {spec.holdout_size}")
    if not 0.0 <= spec.min_validation_recall_at_10 <= 1.0:
        raise InvalidRequest("quality_gate.min_validation_recall_at_10 must be between 0 and 1")
    if bool(spec.ratings_path) != bool(spec.items_path):
        raise InvalidRequest("dataset.ratings_path and dataset.items_path go together: "
                             "give both, or neither for MovieLens 100K")
    movies = ML_100K.movies
    if spec.dataset_name:
        if spec.ratings_path:
            raise InvalidRequest("give dataset.name or dataset.ratings_path and items_path, not both")
        release = release_named(spec.dataset_name)
        if spec.holdout in PREDEFINED_SPLITS and release is not ML_100K:
            raise InvalidRequest(f"holdout {spec.holdout!r} is a MovieLens 100K split; use 'random' or "
                                 f"'last_n_per_user' for {spec.dataset_name}")
        movies = release.movies
    if spec.ratings_path:
        if not config.data_root:
            raise InvalidRequest("this trainer was started without --data-root, so it accepts no dataset paths")
        if spec.holdout in PREDEFINED_SPLITS:
            raise InvalidRequest(f"holdout {spec.holdout!r} is a MovieLens 100K split; "
                                 "use 'random' or 'last_n_per_user' for your own files")
        data_root.check_dataset_files(config.data_root, spec.ratings_path, spec.items_path,
                                      max_bytes=config.max_dataset_bytes)
        movies = 0  # unknown until the job counts them
    # Known catalogue sizes refuse a kind that cannot fit now; otherwise the job fails before training.
    check_catalogue(kind, movies)
    validate_interactions(spec, config)


def validate_interactions(spec: TrainSpec, config: TrainerConfig) -> None:
    """Refuses what is wrong with a request's ``dataset.interactions`` without asking the store.

    The store is not asked here: Train only queues, a store that is down now may be back when the job
    runs (a job that finds it down fails, saying so), and a Train call must not wait on a database.
    """
    if spec.interactions_up_to < 0:
        raise InvalidRequest(f"dataset.interactions.up_to must be 0 (the store's latest) or a store position, "
                             f"got {spec.interactions_up_to}")
    if not spec.interactions:
        if spec.interactions_up_to:
            raise InvalidRequest("dataset.interactions.up_to is set but include is not: set include to add the "
                                 "recorded interactions")
        return
    if spec.holdout in PREDEFINED_SPLITS:
        raise InvalidRequest(f"holdout {spec.holdout!r} is a fixed split of MovieLens 100K's files, which recorded "
                             "interactions are not in; use 'random' or 'last_n_per_user' with interactions")
    if config.events is None:
        raise InteractionsOff("this trainer runs with --events none, so it has no recorded interactions to add: "
                              "start it with --events URL (the store its recommenders write), or leave "
                              "dataset.interactions unset")


def resolve_workers(requested: int, config: TrainerConfig) -> int:
    """The workers a request asks for: 0 means the trainer's ``--workers``, which is also the most allowed."""
    if requested < 0:
        raise InvalidRequest(f"workers must be 0 (this trainer's default, {config.workers}) or a positive number, "
                             f"got {requested}")
    if requested > config.workers:
        raise InvalidRequest(f"workers={requested} is more than this trainer allows: it was started with "
                             f"--workers {config.workers}; ask for 1 to {config.workers} (0 = {config.workers})")
    return requested or config.workers
