"""One training job from request to published version, as named steps.

    load → train → evaluate → gate → refit → plot → index → describe → publish → retention

Each step is a method of :class:`Job` and :meth:`Job.run` reads as the list
above. Between steps the job checks whether it was cancelled, so a cancel
lands at the next step at the latest (training itself checks per batch, a
publish before its last file).

Plain domain code: the request is checked before a job exists
(``train_request``), the gRPC servicer translates, the job manager
schedules, and this module does the work, so each can be tested on its own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from movierec.v1.vocabulary import NEIGHBOURHOOD_PREFIX
from movierec_common import ann_index, movie_metadata
from movierec_common.artifact import (
    LOSS_PLOT_FILE,
    DatasetFacts,
    Distribution,
    InteractionsRecord,
    ModelArtifact,
    RefitRecord,
    VersionMetadata,
)
from movierec_common.logs import event
from recommender_service import shipped_rankings
from trainer_service import quality_gate
from trainer_service.config import TrainerConfig
from trainer_service.data import items_file_movies, load_movielens, load_ratings_files
from trainer_service.errors import Cancelled, InteractionsOff
from trainer_service.evaluation import EVALUATION_MAX_SCORES, evaluate_scores, popularity_vectors
from trainer_service.interactions_data import add_interactions
from trainer_service.job_manager import JobContext
from trainer_service.jobs import JobRecord, JobResult
from trainer_service.kind_settings import KindSettings
from trainer_service.model_kind import EpochReport, TrainedModel, TrainingRun
from trainer_service.neighbourhood_baseline import evaluate_neighbourhood_popularity
from trainer_service.plots import loss_plot_png
from trainer_service.publisher import apply_retention, publish, remove_stale_temp_folders
from trainer_service.ratings import Ratings, Split, time_ordered_history
from trainer_service.releases import ML_100K
from trainer_service.splits import carve_validation, make_split
from trainer_service.tensorboard_runs import REFIT_RUN, JobRun, runs_dir
from trainer_service.train_request import hyperparameters_for, resolve_workers, seed_for
from trainer_service.training import check_catalogue, kind_named, train

if TYPE_CHECKING:  # only a trainer started with --workers above 1 makes one (server.py)
    from trainer_service.distributed import RayTraining

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """How the evaluated model measured: what a job reports whether or not it publishes."""

    metrics: dict[str, float]    # held out, with the run's bookkeeping (validation Recall@10, timings)
    baseline: dict[str, float]   # popularity on the same holdout
    neighbourhood: dict[str, float]  # neighbourhood popularity on the same holdout (``neighbourhood_baseline``)
    split_name: str
    loss_history: tuple[float, ...]
    validation_recall: float     # what the quality gate judges

    def result(self, *, version: int = 0, refusal: str = "") -> JobResult:
        baseline = {**self.baseline, **{f"{NEIGHBOURHOOD_PREFIX}{name}": value
                                        for name, value in self.neighbourhood.items()}}
        return JobResult(metrics=self.metrics, baseline_metrics=baseline, evaluation_split=self.split_name,
                         loss_history=self.loss_history, published=version > 0, model_version=version,
                         not_published_reason=refusal)


def artifact_for(split: Split, user_vectors: np.ndarray, item_vectors: np.ndarray) -> ModelArtifact:
    """Serving excludes everything the user is known to have rated (train and held out),
    and reads each user's history in time order."""
    data = split.data
    seen_indptr, seen_indices, seen_timestamps = time_ordered_history(data, np.arange(len(data)))
    return ModelArtifact(
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


def _library_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in ("movierec", "tensorflow", "tf-keras", "tensorflow-recommenders", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def run_job(job: JobRecord, ctx: JobContext, config: TrainerConfig,
            ray_training: RayTraining | None = None) -> JobResult:
    """Runs one job; returns how it came out (metrics, version or why it was not published).

    ``ray_training`` (a ``distributed.RayTraining``) runs neural kinds whose
    job has more than one worker; closed-form kinds always train here. The
    job's TensorBoard run (see ``tensorboard_runs``) is fed from here, so it
    is written the same way whichever engine trained.
    """
    work = Job(job, ctx, config, ray_training)
    try:
        result = work.run()
    except BaseException as exc:
        cancelled = isinstance(exc, Cancelled)
        work.board.failed(f"cancelled: {exc}" if cancelled else f"failed: {type(exc).__name__}: {exc}")
        raise
    else:
        outcome = (f"published as version {result.model_version}" if result.published
                   else f"not published: {result.not_published_reason}")
        work.board.finish(result.metrics, result.baseline_metrics, outcome,
                          step=max(1, int(result.metrics.get("epochs_run", 1))))
        return result
    finally:
        work.board.close()


class Job:
    """One job's life, step by step (see the module docstring)."""

    def __init__(self, record: JobRecord, ctx: JobContext, config: TrainerConfig,
                 ray_training: RayTraining | None = None):
        self.record = record
        self.spec = spec = record.spec
        self.ctx = ctx
        self.config = config
        self.ray_training = ray_training
        self.kind = kind_named(spec.model)
        self.hp = hyperparameters_for(spec)
        self.seed = seed_for(spec)
        self.workers = 1 if self.kind.closed_form else resolve_workers(spec.workers, config)
        self.board = JobRun(runs_dir(config.model_root, config.tensorboard_dir), record.id, self._board_hparams(),
                            started=record.started_at or None)
        self.loss_history: list[float] = []
        self.interactions: InteractionsRecord | None = None  # set by load when the job adds interactions

    def run(self) -> JobResult:
        split = self.load()
        trained = self.train(split)
        evaluation = self.evaluate(split, trained)
        refusal = self.gate(split, evaluation)
        if refusal:
            return evaluation.result(refusal=refusal)
        self.ctx.check_cancelled()
        served, refit = self.refit(split, trained)
        evaluation = dataclasses.replace(evaluation, metrics={
            **evaluation.metrics, "refit": 1.0 if refit.enabled else 0.0,
            **({"refit_seconds": float(refit.train_seconds)} if refit.enabled else {})})
        self.ctx.check_cancelled()
        self.ctx.report(phase="publishing")
        png = self.plot(trained)
        artifact, index_files, retrieval = self.index(split, served)
        # Beside an index, every user's ranking, computed here so that loading the version costs the
        # recommenders' serving cores nothing (recommender_service.shipped_rankings).
        self.ctx.check_cancelled()
        ranking_files, rankings = shipped_rankings.files_for_version(artifact, index_files, retrieval)
        # Genres and years ride beside the SavedModel, aligned with its movies (the items file's order).
        movie_files, movies = movie_metadata.files_for_version(split.data.facts)
        metadata = dataclasses.replace(self.describe(split, trained, served, refit, evaluation, retrieval),
                                       movies=movies, rankings=rankings)
        self.ctx.check_cancelled()
        version = self.publish(artifact, metadata,
                               {LOSS_PLOT_FILE: png, **index_files, **ranking_files, **movie_files})
        self.retention()
        return evaluation.result(version=version)

    # -- the steps ---------------------------------------------------------------

    def load(self) -> Split:
        """The job's data, read and split; a malformed file or a catalogue the kind cannot hold fails the job.

        A kind with a catalogue bound counts the movies first (cheap), so it
        is refused before the ratings, possibly millions, are parsed.
        Predefined splits are read from the GroupLens 100K copy the ratings
        came from (``Ratings.grouplens_root``).
        """
        spec, config = self.spec, self.config
        self.ctx.report(phase="loading data", total_epochs=self.hp.epochs)
        ratings: Ratings
        if spec.ratings_path:
            assert config.data_root is not None  # train_request.validate_spec refuses paths without one
            if self.kind.max_items is not None:
                check_catalogue(self.kind, items_file_movies(config.data_root, spec.items_path,
                                                             config.max_dataset_bytes))
            ratings = load_ratings_files(config.data_root, spec.ratings_path, spec.items_path,
                                         config.max_dataset_bytes)
        else:
            ratings, _where = load_movielens(spec.dataset_name, config.movielens_dir,
                                             max_bytes=config.max_dataset_bytes)
        self.ctx.check_cancelled()
        if spec.interactions:
            ratings = self.add_interactions(ratings)
        split = make_split(ratings, spec.holdout, spec.holdout_size, self.seed)
        self.ctx.check_cancelled()
        return split

    def add_interactions(self, ratings: Ratings) -> Ratings:
        """The base ratings with the event store's interactions up to the request's position joined
        (``interactions_data``); the position read is the job's ``interactions_watermark`` from here on."""
        store = self.config.events
        if store is None:  # refused at Train; a job record from a trainer that had a store says it here
            raise InteractionsOff("this trainer runs with --events none, so it has no interactions to add")
        self.ctx.report(phase="reading interactions")
        joined = add_interactions(ratings, store, self.spec.interactions_up_to,
                                  check_cancelled=self.ctx.check_cancelled)
        record = joined.record
        self.interactions = record
        self.ctx.report(interactions_watermark=record.watermark, interactions_store_id=record.store_id)
        event(log, "interactions added", job_id=self.record.id, store=record.store, watermark=record.watermark,
              read=record.read, used=record.used, replaced=record.replaced, unknown_movies=record.unknown_movies,
              new_users=record.new_users)
        return joined.ratings

    def train(self, split: Split) -> TrainedModel:
        """The evaluation run: settings chosen on validation carved from the split's training ratings."""

        def on_epoch(report: EpochReport) -> None:
            if report.has_loss:
                self.loss_history.append(report.loss)
            self.board.epoch(report.epoch, report.loss if report.has_loss else None, report.validation)
            self.ctx.report(
                epoch=report.epoch, total_epochs=report.epochs, loss=report.loss, step=report.step,
                steps_per_epoch=report.steps_per_epoch, elapsed_seconds=report.elapsed_seconds,
                validation=dict(report.validation), loss_history=list(self.loss_history),
            )

        trained = self._train(split, on_epoch, phase="training")
        self.board.settings(trained.settings.to_json(), step=max(1, trained.epochs_run))
        return trained

    def evaluate(self, split: Split, trained: TrainedModel) -> Evaluation:
        """The evaluated model and popularity on the held-out ratings, by the one protocol (``evaluation``)."""
        self.ctx.report(phase="evaluating")
        train_csr, test_csr = split.train_csr(), split.test_csr()
        metrics = evaluate_scores(trained.user_vectors, trained.item_vectors, train_csr, test_csr,
                                  max_scores=EVALUATION_MAX_SCORES)
        baseline = evaluate_scores(*popularity_vectors(train_csr, split.data.n_items), train_csr, test_csr,
                                   max_scores=EVALUATION_MAX_SCORES)
        neighbourhood = evaluate_neighbourhood_popularity(train_csr, test_csr, split.data.n_items)
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
        event(log, "job evaluated", job_id=self.record.id, model=self.spec.model, split=split.name,
              recall_at_10=round(metrics["recall_at_10"], 4), ndcg_at_10=round(metrics["ndcg_at_10"], 4),
              popularity_recall_at_10=round(baseline["recall_at_10"], 4),
              neighbourhood_recall_at_10=round(neighbourhood["recall_at_10"], 4),
              train_seconds=round(trained.train_seconds, 1),
              engine=trained.distribution["engine"], workers=trained.distribution["workers"])
        return Evaluation(metrics=metrics, baseline=baseline, neighbourhood=neighbourhood, split_name=split.name,
                          loss_history=tuple(trained.loss_history), validation_recall=validation_recall)

    def gate(self, split: Split, evaluation: Evaluation) -> str:
        """Why the model must not be published (see ``quality_gate``); "" when it may."""
        def baseline_recall() -> float:
            validation = carve_validation(split, self.hp.validation_size, self.seed,
                                          by_time=self.kind.validated_by_time)
            return evaluate_neighbourhood_popularity(validation.train_csr(), validation.test_csr(),
                                                     split.data.n_items)["recall_at_10"]

        return quality_gate.refusal(self.spec, self.config, evaluation.validation_recall, split, baseline_recall)

    def refit(self, split: Split, trained: TrainedModel) -> tuple[TrainedModel, RefitRecord]:
        """The model to publish, trained on every rating (holdout included) with what evaluation chose.

        Evaluation measured ``trained`` on a holdout it never saw; a refit with
        the same settings (epochs, lambda, dropout, weights) is that model plus
        the holdout's ratings, which on a time-ordered holdout are each user's
        most recent ones. The metrics and the quality gate stay the evaluation run's.
        """
        if not self.spec.refit or split.test.size == 0:
            return trained, RefitRecord(enabled=False)

        def on_refit_epoch(report: EpochReport) -> None:  # progress only: the loss history stays the evaluated run's
            if report.has_loss:
                self.board.epoch(report.epoch, report.loss, report.validation, run=REFIT_RUN)
            self.ctx.report(epoch=report.epoch, total_epochs=report.epochs, loss=report.loss, step=report.step,
                            steps_per_epoch=report.steps_per_epoch, elapsed_seconds=report.elapsed_seconds)

        everything = Split(data=split.data, train=np.arange(len(split.data)),
                           test=np.zeros(0, dtype=np.int64), name="all ratings")
        refit = self._train(everything, on_refit_epoch, phase="refitting", refit_settings=trained.settings)
        return refit, RefitRecord(
            enabled=True,
            settings=trained.settings.to_json(),
            settings_chosen_on=trained.validation_split,
            metrics_measured_on=split.name,
            trained_on=f"all {len(split.data):,} ratings ({split.test.size:,} held out for evaluation included)",
            train_seconds=refit.train_seconds,
        )

    def plot(self, trained: TrainedModel) -> bytes:
        """The evaluated run's loss curve and validation Recall@10, stored beside the version."""
        return loss_plot_png(trained.loss_history, [v.get("recall_at_10", 0.0) for v in trained.validation_history],
                             f"{self.spec.model} ({self.record.id})")

    def index(self, split: Split, served: TrainedModel
              ) -> tuple[ModelArtifact, dict[str, bytes], dict[str, Any] | None]:
        """The served model as an artifact, and its approximate index when the catalogue is large enough."""
        artifact = artifact_for(split, served.user_vectors, served.item_vectors)
        index_files, retrieval = ann_index.files_for_version(
            artifact.item_vectors, artifact.user_vectors, min_items=self.config.ann_min_items, seed=self.seed)
        return artifact, index_files, retrieval

    def describe(self, split: Split, trained: TrainedModel, served: TrainedModel,
                 refit: RefitRecord, evaluation: Evaluation,
                 retrieval: dict[str, Any] | None) -> VersionMetadata:
        """The version's metadata.json: what was trained, on what, how it was chosen and how it measured."""
        spec, data = self.spec, split.data
        return VersionMetadata(
            model_kind=spec.model,
            job_id=self.record.id,
            created_at=dt.datetime.now(dt.UTC).isoformat(),
            hyperparameters=self.hp.as_dict(),
            seed=self.seed,
            dataset=DatasetFacts(
                source=data.source, fingerprint=data.fingerprint, ratings_path=spec.ratings_path,
                items_path=spec.items_path, num_users=data.n_users, num_items=data.n_items,
                num_ratings=len(data)),
            evaluation_split=split.name,
            # What the served vectors were trained on: a refit on all ratings with the
            # evaluation run's settings, or (enabled false) the evaluated model itself.
            refit=refit,
            # What validation chose (epochs, lambda, dropout, blend weight, scales,
            # recency rules): what the served model was trained with, where
            # "hyperparameters" holds the request (0 there = choose on validation).
            settings=trained.settings.to_json(),
            settings_chosen_on=trained.validation_split,
            # What the choice compared: each candidate's validation metrics, each part's.
            selection=trained.selection,
            history_order="time",
            query_encoder=served.encoder.to_json() if served.encoder is not None else None,
            metrics=evaluation.metrics,
            baseline_metrics={"popularity": evaluation.baseline, "neighbourhood_popularity": evaluation.neighbourhood},
            loss_history=evaluation.loss_history,
            validation_history=tuple(trained.validation_history),
            distribution=Distribution.from_json(trained.distribution),
            libraries=_library_versions(),
            retrieval=retrieval,
            interactions=self.interactions,
        )

    def publish(self, artifact: ModelArtifact, metadata: VersionMetadata,
                files: dict[str, bytes]) -> int:
        return publish(self.config.model_root, artifact, metadata, files, should_stop=self.ctx.should_stop,
                       keys=self.config.publish_keys)

    def retention(self) -> None:
        """Old versions and dead staging removed after a publish (publisher.apply_retention).

        Never the job's failure: the version is already live, so a job that
        published succeeded. What could not be removed is logged, and the
        next publish tries again.
        """
        root = self.config.model_root
        try:
            apply_retention(root, self.config.keep_versions)
            remove_stale_temp_folders(root, min_age_seconds=self.config.stale_staging_seconds)
        except Exception as exc:  # any failure here, storage or not, must not undo a published version's job
            event(log, "retention failed after a successful publish; the next publish tries again",
                  logging.WARNING, job_id=self.record.id, error=f"{type(exc).__name__}: {exc}")

    # -- helpers ---------------------------------------------------------------

    def _train(self, split: Split, on_epoch: Callable[[EpochReport], None], *, phase: str,
               refit_settings: KindSettings | None = None) -> TrainedModel:
        """In-process, or on Ray Train when the job has more than one worker; the result is the same kind of thing.

        ``phase`` ("training", "refitting") is what progress reports say, and names a Ray run after the job.
        A Ray job reports "starting ray workers" first, then ``phase`` once its workers are up.
        """
        run = TrainingRun(kind=self.spec.model, split=split, hyperparameters=self.hp, seed=self.seed,
                          on_epoch=on_epoch, should_stop=self.ctx.should_stop, refit_settings=refit_settings,
                          workers=self.workers,
                          name=self.record.id if phase == "training" else f"{self.record.id}-{phase}")
        if run.workers <= 1:
            self.ctx.report(phase=phase)
            return train(run)
        if self.ray_training is None:
            raise RuntimeError(f"job asks for {run.workers} workers but this trainer has no Ray set up (--workers 1)")
        return self.ray_training.train(
            run, on_phase=lambda name: self.ctx.report(phase=phase if name == "training" else name))

    def _board_hparams(self) -> dict[str, bool | int | float | str]:
        """What the job was asked to do, as TensorBoard's hparams plugin compares runs."""
        spec = self.spec
        return {"model_kind": spec.model, **self.hp.as_dict(), "holdout": spec.holdout,
                "holdout_size": spec.holdout_size, "seed": self.seed,
                "dataset": spec.dataset_name or spec.ratings_path or ML_100K.key,
                "workers": self.workers, "refit": spec.refit}

