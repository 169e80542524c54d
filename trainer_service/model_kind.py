"""What a model kind is, and the one way every kind trains.

In the spirit of TFRS's ``models/base.py``, where a ``tfrs.Model`` subclass
supplies ``compute_loss`` and the base class does the rest of a training
step: a :class:`ModelKind` subclass states its facts (name, defaults, closed
form or not, validated by time or not, its catalogue bound, its settings
record) and supplies two methods, and :meth:`ModelKind.train` does what
every kind's training shares.

* ``fit(run, validation)`` chooses the kind's settings on ``validation``, a
  split carved from the run's training ratings (randomly, or each user's
  newest ratings for a kind validated by time), and returns the model trained
  with them on all of the run's training ratings;
* ``refit(run, settings)`` chooses nothing: it trains with ``settings``, a
  previous run's choice, which is how a job publishes a model that has also
  seen its holdout.

Early stopping and model selection look only at the validation split, so the
split's test set stays untouched until the caller evaluates. Runs are seeded
so the same request trains the same model. The kinds are registered once, in
``training``.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from movierec_common.artifact import ENGINE_IN_PROCESS
from movierec_common.session_query import QueryEncoder
from movierec_common.tfenv import tensorflow
from trainer_service.errors import Cancelled
from trainer_service.evaluation import evaluate_scores
from trainer_service.hyperparams import Hyperparameters, with_overrides
from trainer_service.kind_settings import KindSettings
from trainer_service.ratings import Split
from trainer_service.splits import carve_validation

tf = tensorflow()

S = TypeVar("S", bound=KindSettings)

SELECTION_METRIC = "recall_at_10"
# Scores computed per validation pass (users x movies). MovieLens 100K and 1M
# are validated on every user; a million-movie catalogue on a fixed sample of
# 500, so early stopping costs seconds per epoch, not minutes.
VALIDATION_MAX_SCORES = 500_000_000


def in_process_distribution() -> dict[str, Any]:
    return {"engine": ENGINE_IN_PROCESS, "workers": 1, "num_replicas_in_sync": 1}


@dataclass
class EpochReport:
    epoch: int
    epochs: int
    loss: float
    elapsed_seconds: float
    validation: dict[str, float]
    step: int
    steps_per_epoch: int
    # False for the closed-form kinds' single report: they minimise no loss, and
    # its 0.0 must not be read (or plotted) as one.
    has_loss: bool = True


@dataclass(frozen=True)
class TrainingRun:
    """One training run: what to train on what, with which settings, and who hears of its progress.

    Everything a run needs travels in this one value, from the job pipeline
    through the engine that trains it (in this process or on Ray workers) to
    the kind's ``fit`` or ``refit``.
    """

    kind: str
    split: Split
    hyperparameters: Hyperparameters
    seed: int
    on_epoch: Callable[[EpochReport], None] | None = None
    should_stop: Callable[[], bool] | None = None
    # A previous run's choice (typed, or as metadata.json holds it): given, nothing
    # is chosen and the model is trained on all of split.train with it.
    refit_settings: KindSettings | Mapping[str, Any] | None = None
    workers: int = 1        # data-parallel workers; above 1 a neural kind trains on Ray
    name: str = ""          # what Ray calls the run (the job id, "-refitting" for a refit)
    strategy: Any = None    # tf.distribute strategy inside a Ray worker; None: the default one
    started: float = 0.0    # time.monotonic() when training began (ModelKind.train sets it)

    def cancel_point(self) -> None:
        """Raises ``Cancelled`` when the run was asked to stop."""
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("training cancelled on request")

    def seconds(self) -> float:
        return time.monotonic() - self.started


@dataclass
class TrainedModel:
    kind: str
    user_vectors: np.ndarray
    item_vectors: np.ndarray
    loss_history: list[float]
    validation_history: list[dict[str, float]]
    validation_metrics: dict[str, float]
    epochs_run: int
    best_epoch: int
    train_seconds: float
    hyperparameters: Hyperparameters
    # What validation chose, enough to train the same model again on more data
    # (``TrainingRun.refit_settings``): epochs, lambda, dropout, weights.
    settings: KindSettings
    validation_split: str = ""          # what validation_metrics were measured on
    # What the choice compared (each candidate's validation metrics, each part's)
    # and kind-specific facts (the two-tower's softmax): metadata.json's "selection".
    selection: dict[str, Any] = field(default_factory=dict)
    # How it was trained: engine ("in_process" or "ray_train"), workers, num_replicas_in_sync.
    distribution: dict[str, Any] = field(default_factory=in_process_distribution)
    # How serving turns a history into a query for this model (session_query).
    encoder: QueryEncoder | None = None
    refit: bool = False  # trained on given settings, without a validation split


def validation_metrics(user_vectors: np.ndarray, item_vectors: np.ndarray, validation: Split) -> dict[str, float]:
    """Recall@10, NDCG@10 and Recall@50 on a validation split: what every kind chooses by."""
    metrics = evaluate_scores(user_vectors, item_vectors, validation.train_csr(), validation.test_csr(), ks=(10, 50),
                              max_scores=VALIDATION_MAX_SCORES)
    return {k: v for k, v in metrics.items() if k in ("recall_at_10", "ndcg_at_10", "recall_at_50")}


class ModelKind(abc.ABC, Generic[S]):
    """A trainable model kind: its facts, and how it fits and refits (see the module docstring)."""

    name: ClassVar[str]
    defaults: ClassVar[Hyperparameters]
    settings_type: type[S]
    closed_form: ClassVar[bool] = False        # trains in closed form, on one worker, with no loss
    validated_by_time: ClassVar[bool] = False  # validation holds out each user's newest ratings
    max_items: ClassVar[int | None] = None     # the largest catalogue it can hold; None: no bound
    bound_reason: ClassVar[str] = ""           # why, completing "<kind> ... and supports at most N movies"

    def hyperparameters(self, overrides: Mapping[str, float | int] | None = None) -> Hyperparameters:
        """This kind's defaults with a request's overrides, validated (ValueError names the bound)."""
        return with_overrides(self.defaults, overrides)

    def holds(self, n_items: int) -> bool:
        """Whether a catalogue of ``n_items`` movies is within this kind's bound."""
        return self.max_items is None or n_items <= self.max_items

    def settings_from(self, settings: KindSettings | Mapping[str, Any]) -> S:
        """``settings`` as this kind's record: as given, or read from its JSON."""
        if isinstance(settings, Mapping):
            return self.settings_type.from_json(settings)
        if not isinstance(settings, self.settings_type):
            raise TypeError(f"{self.name} refits with {self.settings_type.__name__}, got {type(settings).__name__}")
        return settings

    def train(self, run: TrainingRun) -> TrainedModel:
        """Trains ``run``: its refit when it carries settings, else a fit choosing them on validation.

        With a multi-worker ``run.strategy`` (neural kinds only) this is one
        worker's part of a data-parallel run; only the chief's result holds
        vectors.
        """
        if run.strategy is not None and self.closed_form:
            raise ValueError(f"{self.name} trains in closed form on one worker; it takes no distribution strategy")
        run = dataclasses.replace(run, started=time.monotonic())
        # The same seed on every worker: the same initial weights and the same data order.
        tf.keras.utils.set_random_seed(run.seed)
        if run.refit_settings is not None:
            return self.refit(run, self.settings_from(run.refit_settings))
        validation = carve_validation(run.split, run.hyperparameters.validation_size, run.seed,
                                      by_time=self.validated_by_time)
        return self.fit(run, validation)

    @abc.abstractmethod
    def fit(self, run: TrainingRun, validation: Split) -> TrainedModel:
        """Chooses the settings on ``validation`` and trains with them on all of ``run.split.train``."""

    @abc.abstractmethod
    def refit(self, run: TrainingRun, settings: S) -> TrainedModel:
        """Trains with ``settings`` on all of ``run.split.train``, choosing nothing."""
