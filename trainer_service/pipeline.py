"""One training job from request to published version: load, split, train,
evaluate, gate, publish.

Plain domain code: the gRPC servicer validates and translates, the job manager
schedules, and this module does the work, so each can be tested on its own.
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
from dataclasses import dataclass

import numpy as np

from movierec_common import ann_index
from movierec_common import artifact as artifact_format
from movierec_common.logs import event
from movierec_common.model_root import list_versions, read_pin, version_dir, versions_in_use
from trainer_service import data as datasets
from trainer_service.evaluation import EVALUATION_MAX_SCORES, evaluate_scores, popularity_vectors
from trainer_service.hyperparams import MODEL_KINDS, Hyperparameters, resolve_hyperparameters
from trainer_service.job_manager import JobCancelled, JobContext
from trainer_service.jobs import JobRecord, JobResult, TrainSpec
from trainer_service.plots import loss_plot_png
from trainer_service.publisher import PublishCancelled, apply_retention, publish
from trainer_service.tensorboard_runs import REFIT_RUN, JobRun, runs_dir
from trainer_service.training import CLOSED_FORM_KINDS, EpochReport, TrainingCancelled, catalogue_refusal, train_model

log = logging.getLogger(__name__)

DEFAULT_SEED = 42
MAX_HOLDOUT_SIZE = 100


class InvalidRequest(ValueError):
    """The request cannot be run as given; the message says what to change."""


@dataclass(frozen=True)
class TrainerConfig:
    model_root: str
    data_root: str | None = None
    movielens_dir: str | None = None
    queue_size: int = 4
    keep_versions: int = 5
    min_validation_recall_at_10: float = 0.0  # trainer-wide quality floor
    ann_min_items: int = ann_index.MIN_ITEMS  # catalogues this large ship an approximate index
    max_dataset_bytes: int = datasets.MAX_FILE_BYTES  # larger dataset files are refused unread
    workers: int = 1  # data-parallel workers a job may use (and uses by default); 1 = in-process, no Ray
    ray_address: str | None = None  # an existing Ray cluster; None = a local Ray started when first needed
    # TensorBoard event files per job: <tensorboard_dir>/<job id>/; None = <model root>/.runs
    tensorboard_dir: str | None = None


def hyperparameters_for(spec: TrainSpec) -> Hyperparameters:
    overrides = dict(spec.hyperparameters)
    if spec.epochs:
        overrides["epochs"] = spec.epochs
    return resolve_hyperparameters(spec.model, overrides)


def validate_spec(spec: TrainSpec, config: TrainerConfig) -> None:
    """Raises InvalidRequest for anything a caller must fix that is known without reading a dataset.

    Runs on the Train call's thread, so it only looks at the request and
    ``stat``s files: names, ranges, paths confined to the data root, file
    sizes. A dataset's content (malformed lines, its catalogue's size for a
    closed-form kind) is the job's to read, and fails the job with the same
    message (see :func:`load_split`); a named release's catalogue size is
    known, so a kind that cannot hold it is refused here.
    """
    if spec.model not in MODEL_KINDS:
        raise InvalidRequest(f"unknown model kind {spec.model!r}; choose one of: {', '.join(MODEL_KINDS)}")
    try:
        hyperparameters_for(spec)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    if spec.holdout not in datasets.HOLDOUTS:
        raise InvalidRequest(f"unknown holdout {spec.holdout!r}; choose one of: {', '.join(datasets.HOLDOUTS)}")
    if not 1 <= spec.holdout_size <= MAX_HOLDOUT_SIZE:
        raise InvalidRequest(f"holdout_size must be between 1 and {MAX_HOLDOUT_SIZE}, got {spec.holdout_size}")
    if not 0.0 <= spec.min_validation_recall_at_10 <= 1.0:
        raise InvalidRequest("quality_gate.min_validation_recall_at_10 must be between 0 and 1")
    if bool(spec.ratings_path) != bool(spec.items_path):
        raise InvalidRequest("dataset.ratings_path and dataset.items_path go together: "
                             "give both, or neither for MovieLens 100K")
    movies = datasets.ML_100K.movies
    if spec.dataset_name:
        if spec.ratings_path:
            raise InvalidRequest("give dataset.name or dataset.ratings_path and items_path, not both")
        try:
            release = datasets.release_named(spec.dataset_name)
        except datasets.DatasetError as exc:
            raise InvalidRequest(str(exc)) from exc
        if spec.holdout in datasets.PREDEFINED_SPLITS and release is not datasets.ML_100K:
            raise InvalidRequest(f"holdout {spec.holdout!r} is a MovieLens 100K split; use 'random' or "
                                 f"'last_n_per_user' for {spec.dataset_name}")
        movies = release.movies
    if spec.ratings_path:
        if not config.data_root:
            raise InvalidRequest("this trainer was started without --data-root, so it accepts no dataset paths")
        if spec.holdout in datasets.PREDEFINED_SPLITS:
            raise InvalidRequest(f"holdout {spec.holdout!r} is a MovieLens 100K split; "
                                 "use 'random' or 'last_n_per_user' for your own files")
        try:
            datasets.check_dataset_files(config.data_root, spec.ratings_path, spec.items_path,
                                         max_bytes=config.max_dataset_bytes)
        except datasets.DatasetError as exc:
            raise InvalidRequest(str(exc)) from exc
        movies = 0  # unknown until the job counts them
    # Known catalogue sizes refuse a kind that cannot fit now; otherwise the job fails before training.
    refusal = catalogue_refusal(spec.model, movies)
    if refusal:
        raise InvalidRequest(refusal)


def resolve_workers(requested: int, config: TrainerConfig) -> int:
    """The workers a request asks for: 0 means the trainer's ``--workers``, which is also the most allowed."""
    if requested < 0:
        raise InvalidRequest(f"workers must be 0 (this trainer's default, {config.workers}) or a positive number, "
                             f"got {requested}")
    if requested > config.workers:
        raise InvalidRequest(f"workers={requested} is more than this trainer allows: it was started with "
                             f"--workers {config.workers}; ask for 1 to {config.workers} (0 = {config.workers})")
    return requested or config.workers


def load_split(spec: TrainSpec, config: TrainerConfig) -> datasets.Split:
    """The job's data, read and split; a malformed file or a catalogue the kind cannot hold fails the job.

    A closed-form kind counts the movies first (cheap), so it is refused
    before the ratings, possibly millions, are parsed.
    """
    seed = spec.seed or DEFAULT_SEED
    if spec.ratings_path:
        if spec.model in CLOSED_FORM_KINDS:
            refusal = catalogue_refusal(spec.model, datasets.items_file_movies(
                config.data_root, spec.items_path, config.max_dataset_bytes))
            if refusal:
                raise InvalidRequest(refusal)
        ratings = datasets.load_ratings_files(config.data_root, spec.ratings_path, spec.items_path,
                                              config.max_dataset_bytes)
    else:
        ratings, _where = datasets.load_movielens(spec.dataset_name, config.movielens_dir,
                                                  max_bytes=config.max_dataset_bytes)
    # Predefined splits are read from the GroupLens 100K copy the ratings came from (ratings.grouplens_root).
    return datasets.make_split(ratings, spec.holdout, spec.holdout_size, seed)


def _quality_gate(spec: TrainSpec, config: TrainerConfig, validation_recall: float, split: datasets.Split) -> str:
    """Returns why the model must not be published, or "" when it may."""
    if spec.quality_gate_disabled:
        return ""
    floor = spec.min_validation_recall_at_10 or config.min_validation_recall_at_10
    if validation_recall < floor:
        return f"validation Recall@10 {validation_recall:.4f} is below the floor {floor:.4f}"
    if spec.require_no_regression:
        return regression(config.model_root, validation_recall, split)
    return ""


def regression(root: str, validation_recall: float, split: datasets.Split) -> str:
    """Why publishing a model of this validation Recall@10 would be a regression; "" when it would not.

    A regression is against what callers get, not against whatever is newest
    on disk (after a rollback the newest may be the version nobody should
    serve). The version(s) compared against, the first rule that names a
    version with readable metadata:

    1. the pinned version (``model_root.read_pin``): every replica follows it;
    2. else every version a live recommender serves (its serving marker,
       ``model_root.versions_in_use``): the new model must be no worse than
       any of them, since during a rollout some callers get each;
    3. else (nothing pinned, no live recommender) the newest published version.

    Only a version evaluated on the same data (dataset fingerprint and
    evaluation split) is comparable; equal is not a regression. When the pin
    or the markers cannot be read, nothing is published: which version is
    served is unknown, so a regression cannot be ruled out.
    """
    try:
        pinned = read_pin(root)
        served = sorted(versions_in_use(root))
        versions = list_versions(root)
    except Exception as exc:  # an unreachable store, a damaged pin
        return (f"cannot tell which version is served ({type(exc).__name__}: {exc}), so a regression "
                f"cannot be ruled out")
    rules = [([pinned] if pinned is not None else [], "the pinned version"),
             (served, "served by a live recommender"),
             (versions[-1:], "the newest published version")]
    for candidates, rule in rules:
        compared = []
        for version in candidates:
            try:
                current = artifact_format.read_metadata(version_dir(root, version))
            except artifact_format.ArtifactError:
                continue  # deleted or damaged: nobody can be served it
            compared.append(version)
            same_data = (current.dataset.fingerprint == split.data.fingerprint
                         and current.evaluation_split == split.name)
            previous = current.metrics.get("validation_recall_at_10")
            if same_data and previous is not None and validation_recall < previous:
                return (f"validation Recall@10 {validation_recall:.4f} is below version {version}'s "
                        f"{previous:.4f} on the same data ({rule})")
        if compared:
            event(log, "no regression", versions=compared, rule=rule,
                  validation_recall_at_10=round(validation_recall, 4))
            return ""
    return ""


def _library_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in ("movierec", "tensorflow", "tf-keras", "tensorflow-recommenders", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def artifact_for(split: datasets.Split, user_vectors: np.ndarray,
                 item_vectors: np.ndarray) -> artifact_format.ModelArtifact:
    """Serving excludes everything the user is known to have rated (train and held out),
    and reads each user's history in time order."""
    data = split.data
    seen_indptr, seen_indices, seen_timestamps = datasets.time_ordered_history(data, np.arange(len(data)))
    return artifact_format.ModelArtifact(
        user_ids=data.user_ids.astype(str),
        user_vectors=np.asarray(user_vectors, dtype=np.float32),
        movie_ids=data.movie_ids.astype(np.int64),
        titles=data.titles.astype(str),
        item_vectors=np.asarray(item_vectors, dtype=np.float32),
        seen_indptr=seen_indptr,
        seen_indices=seen_indices,
        popularity=np.bincount(data.items, minlength=data.n_items).astype(np.float32),
        seen_timestamps=seen_timestamps,
    )


def _train(spec: TrainSpec, split, hp, seed, workers: int, job_id: str, ctx: JobContext, on_epoch, ray_training,
           refit_settings: dict | None = None, phase: str = "training"):
    """In-process, or on Ray Train when the job has more than one worker; the result is the same kind of thing.

    A Ray job reports "starting ray workers" first, then ``phase`` once its workers are up.
    """
    if workers <= 1:
        ctx.report(phase=phase)
        return train_model(spec.model, split, hp, seed, on_epoch=on_epoch, should_stop=ctx.should_stop,
                           refit_settings=refit_settings)
    if ray_training is None:
        raise RuntimeError(f"job asks for {workers} workers but this trainer has no Ray set up (--workers 1)")
    run_name = job_id if phase == "training" else f"{job_id}-{phase}"
    return ray_training.train(spec.model, split, hp, seed, workers, run_name,
                              on_epoch=on_epoch, should_stop=ctx.should_stop, refit_settings=refit_settings,
                              on_phase=lambda name: ctx.report(phase=phase if name == "training" else name))


def _refit(spec: TrainSpec, split: datasets.Split, trained, hp, seed, workers, job_id, ctx: JobContext, on_epoch,
           ray_training):
    """The model to publish, trained on every rating (holdout included) with what evaluation chose.

    Evaluation measured ``trained`` on a holdout it never saw; a refit with
    the same settings (epochs, lambda, dropout, weights) is that model plus
    the holdout's ratings, which on a time-ordered holdout are each user's
    most recent ones. The metrics and the quality gate stay the evaluation run's.
    """
    if not spec.refit or split.test.size == 0:
        return trained, artifact_format.RefitRecord(enabled=False)
    everything = datasets.Split(data=split.data, train=np.arange(len(split.data)),
                                test=np.zeros(0, dtype=np.int64), name="all ratings")
    refit = _train(spec, everything, hp, seed, workers, job_id, ctx, on_epoch, ray_training,
                   refit_settings=trained.settings, phase="refitting")
    return refit, artifact_format.RefitRecord(
        enabled=True,
        settings=_json_ready(dict(trained.settings)),
        settings_chosen_on=trained.validation_split,
        metrics_measured_on=split.name,
        trained_on=f"all {len(split.data):,} ratings ({split.test.size:,} held out for evaluation included)",
        train_seconds=refit.train_seconds,
    )


def run_job(job: JobRecord, ctx: JobContext, config: TrainerConfig, ray_training=None) -> JobResult:
    """Runs one job; returns how it came out (metrics, version or why it was not published).

    ``ray_training`` (a ``distributed.RayTraining``) runs neural kinds whose
    job has more than one worker; closed-form kinds always train here. The
    job's TensorBoard run (see ``tensorboard_runs``) is fed from here, so it
    is written the same way whichever engine trained.
    """
    spec = job.spec
    hp = hyperparameters_for(spec)
    seed = spec.seed or DEFAULT_SEED
    workers = 1 if spec.model in CLOSED_FORM_KINDS else resolve_workers(spec.workers, config)
    board = JobRun(runs_dir(config.model_root, config.tensorboard_dir), job.id,
                   _board_hparams(spec, hp, seed, workers), started=job.started_at or None)
    try:
        result = _run(job, ctx, config, ray_training, hp, seed, workers, board)
    except BaseException as exc:
        cancelled = isinstance(exc, (JobCancelled, TrainingCancelled, PublishCancelled))
        board.failed(f"cancelled: {exc}" if cancelled else f"failed: {type(exc).__name__}: {exc}")
        raise
    else:
        outcome = (f"published as version {result.model_version}" if result.published
                   else f"not published: {result.not_published_reason}")
        board.finish(result.metrics, result.baseline_metrics, outcome,
                     step=max(1, int(result.metrics.get("epochs_run", 1))))
        return result
    finally:
        board.close()


def _board_hparams(spec: TrainSpec, hp: Hyperparameters, seed: int, workers: int) -> dict:
    """What the job was asked to do, as TensorBoard's hparams plugin compares runs."""
    return {"model_kind": spec.model, **hp.as_dict(), "holdout": spec.holdout, "holdout_size": spec.holdout_size,
            "seed": seed, "dataset": spec.dataset_name or spec.ratings_path or datasets.ML_100K.key,
            "workers": workers, "refit": spec.refit}


def _json_ready(value):
    """``value`` with numpy scalars as Python numbers and tuples as lists, for metadata.json."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _run(job: JobRecord, ctx: JobContext, config: TrainerConfig, ray_training, hp: Hyperparameters, seed: int,
         workers: int, board: JobRun) -> JobResult:
    spec = job.spec
    ctx.report(phase="loading data", total_epochs=hp.epochs)
    split = load_split(spec, config)
    ctx.check_cancelled()

    loss_history: list[float] = []

    def on_epoch(report: EpochReport) -> None:
        if report.has_loss:
            loss_history.append(report.loss)
        board.epoch(report.epoch, report.loss if report.has_loss else None, report.validation)
        ctx.report(
            epoch=report.epoch, total_epochs=report.epochs, loss=report.loss, step=report.step,
            steps_per_epoch=report.steps_per_epoch, elapsed_seconds=report.elapsed_seconds,
            validation=dict(report.validation), loss_history=list(loss_history),
        )

    trained = _train(spec, split, hp, seed, workers, job.id, ctx, on_epoch, ray_training)
    board.settings(trained.settings, step=max(1, trained.epochs_run))
    ctx.report(phase="evaluating")
    train_csr, test_csr = split.train_csr(), split.test_csr()
    metrics = evaluate_scores(trained.user_vectors, trained.item_vectors, train_csr, test_csr,
                              max_scores=EVALUATION_MAX_SCORES)
    baseline = evaluate_scores(*popularity_vectors(train_csr, split.data.n_items), train_csr, test_csr,
                               max_scores=EVALUATION_MAX_SCORES)
    validation_recall = float(trained.validation_metrics.get("recall_at_10", 0.0))
    metrics.update(
        validation_recall_at_10=validation_recall,
        train_seconds=trained.train_seconds,
        epochs_run=float(trained.epochs_run),
        best_epoch=float(trained.best_epoch),
        workers=float(trained.distribution["workers"]),
        num_replicas_in_sync=float(trained.distribution["num_replicas_in_sync"]),
    )
    if trained.loss_history:
        metrics["final_loss"] = float(trained.loss_history[-1])
    outcome = dict(metrics=metrics, baseline_metrics=baseline, evaluation_split=split.name,
                   loss_history=tuple(trained.loss_history))
    event(log, "job evaluated", job_id=job.id, model=spec.model, split=split.name,
          recall_at_10=round(metrics["recall_at_10"], 4), ndcg_at_10=round(metrics["ndcg_at_10"], 4),
          popularity_recall_at_10=round(baseline["recall_at_10"], 4), train_seconds=round(trained.train_seconds, 1),
          engine=trained.distribution["engine"], workers=trained.distribution["workers"])
    refusal = _quality_gate(spec, config, validation_recall, split)
    if refusal:
        return JobResult(**outcome, published=False, not_published_reason=refusal)
    ctx.check_cancelled()

    def on_refit_epoch(report: EpochReport) -> None:  # progress only: the loss history stays the evaluated run's
        if report.has_loss:
            board.epoch(report.epoch, report.loss, report.validation, run=REFIT_RUN)
        ctx.report(epoch=report.epoch, total_epochs=report.epochs, loss=report.loss, step=report.step,
                   steps_per_epoch=report.steps_per_epoch, elapsed_seconds=report.elapsed_seconds)

    served, refit = _refit(spec, split, trained, hp, seed, workers, job.id, ctx, on_refit_epoch, ray_training)
    metrics["refit"] = 1.0 if refit.enabled else 0.0
    if refit.enabled:
        metrics["refit_seconds"] = float(refit.train_seconds)
    ctx.check_cancelled()
    ctx.report(phase="publishing")
    png = loss_plot_png(trained.loss_history, [v.get("recall_at_10", 0.0) for v in trained.validation_history],
                        f"{spec.model} ({job.id})")
    artifact = artifact_for(split, served.user_vectors, served.item_vectors)
    index_files, retrieval = ann_index.files_for_version(
        artifact.item_vectors, artifact.user_vectors, min_items=config.ann_min_items, seed=seed)
    metadata = artifact_format.VersionMetadata(
        model_kind=spec.model,
        job_id=job.id,
        created_at=dt.datetime.now(dt.UTC).isoformat(),
        hyperparameters=hp.as_dict(),
        seed=seed,
        dataset=artifact_format.DatasetFacts(
            source=split.data.source, fingerprint=split.data.fingerprint, ratings_path=spec.ratings_path,
            items_path=spec.items_path, num_users=split.data.n_users, num_items=split.data.n_items,
            num_ratings=len(split.data)),
        evaluation_split=split.name,
        # What the served vectors were trained on: a refit on all ratings with the
        # evaluation run's settings, or (enabled false) the evaluated model itself.
        refit=refit,
        # What validation chose (epochs, lambda, dropout, blend weight, scales,
        # recency rules): what the served model was trained with, where
        # "hyperparameters" holds the request (0 there = choose on validation).
        settings=_json_ready(trained.settings),
        settings_chosen_on=trained.validation_split,
        # What the choice compared: each candidate's validation metrics, each part's.
        selection=_json_ready({k: v for k, v in trained.extra.items() if k not in trained.settings}),
        history_order="time",
        query_encoder=served.encoder.to_json(),
        metrics=metrics,
        baseline_metrics={"popularity": baseline},
        loss_history=tuple(trained.loss_history),
        validation_history=tuple(trained.validation_history),
        distribution=artifact_format.Distribution(**trained.distribution),
        libraries=_library_versions(),
        retrieval=retrieval,
    )
    ctx.check_cancelled()
    version = publish(config.model_root, artifact, metadata, {artifact_format.LOSS_PLOT_FILE: png, **index_files},
                      should_stop=ctx.should_stop)
    apply_retention(config.model_root, config.keep_versions)
    return JobResult(**outcome, published=True, model_version=version)
