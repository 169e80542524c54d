"""The closed-form kinds: EASE^R, DLAE, the DLAE + two-tower blend, and the history-aware sequential kind.

Each trains in closed form instead of through the neural fit loop: the user
vector is the (possibly recency-weighted) history row and the item vectors
are columns of item-item weights, so scores are ``history row . weight
column`` and there is one "epoch" and no loss. Their settings (lambda,
dropout, weights, recency rules) are chosen on validation by a small grid
search, then the weights are solved again on all training ratings.

They hold a few dense movie-by-movie float64 matrices, hence their bound:
20k movies is about 3.2 GB each, the most one request may ask of this
machine.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

import numpy as np

from movierec_common.session_query import HISTORY, Part, QueryEncoder, history_encoder, pooled_encoder
from trainer_service import history_matrix, models, sequential
from trainer_service.hyperparams import COMMON, Hyperparameters
from trainer_service.kind_settings import (
    BlendSettings,
    DlaeSettings,
    EaseSettings,
    KindSettings,
    RecencyRule,
    SequentialSettings,
)
from trainer_service.model_kind import EpochReport, ModelKind, TrainedModel, TrainingRun, validation_metrics
from trainer_service.neural_kinds import TwoTower, fit_neural
from trainer_service.ratings import Split

S = TypeVar("S", bound=KindSettings)

# The closed-form kinds hold a few dense I x I float64 matrices: 20k movies is
# about 3.2 GB each, the most one request may ask of this machine.
MAX_CLOSED_FORM_ITEMS = 20_000
BLEND_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# DLAE's (ridge penalty, dropout rate) candidates, searched on the validation
# split. On ua.base validation the good region is lambda 150-500 with dropout
# 0.5-0.67 and flat inside it; six points keep the search to a few seconds.
# (While exploring, ua.test figures were printed next to the validation ones;
# the grid's range came from validation, and each run picks its point from it
# on validation only.)
DLAE_LAMBDAS = (150.0, 300.0, 500.0)
DLAE_DROPOUTS = (0.5, 0.67)


class ClosedFormKind(ModelKind[S]):
    """A kind solved in closed form on one worker; it refuses catalogues past its dense inverse's bound."""

    closed_form = True
    max_items = MAX_CLOSED_FORM_ITEMS
    bound_reason = "inverts a dense movie-by-movie matrix"

    def model(self, run: TrainingRun, history: np.ndarray, weights: np.ndarray, metrics: dict[str, float],
              settings: S, validation: Split | None, selection: dict[str, Any] | None = None,
              encoder: QueryEncoder | None = None) -> TrainedModel:
        """The result: one "epoch", scores = history row . weight column."""
        elapsed = run.seconds()
        if run.on_epoch is not None:
            run.on_epoch(EpochReport(epoch=1, epochs=1, loss=0.0, elapsed_seconds=elapsed, validation=metrics,
                                     step=1, steps_per_epoch=1, has_loss=False))
        return TrainedModel(
            kind=self.name, user_vectors=history, item_vectors=np.ascontiguousarray(weights.T),
            loss_history=[], validation_history=[metrics] if metrics else [], validation_metrics=metrics,
            epochs_run=1, best_epoch=1, train_seconds=elapsed, hyperparameters=run.hyperparameters,
            validation_split="" if validation is None else validation.name,
            selection=selection or {}, settings=settings,
            encoder=encoder or history_encoder(history.shape[1]), refit=validation is None,
        )


def select_dlae(hp: Hyperparameters, validation: Split, n_items: int, run: TrainingRun
                ) -> tuple[np.ndarray, np.ndarray, DlaeSettings, dict[str, float], list[dict[str, float]]]:
    """Choose DLAE's (lambda, dropout) on ``validation``; a caller-set ``l2_lambda`` fixes lambda.

    Returns the held-in history, the chosen held-in weights, the choice, its
    validation metrics and every candidate's metrics (for the run's record).
    """
    held_in = history_matrix.binary_history(validation.train_csr(), n_items)
    gram = models.item_gram(held_in)
    lambdas = (hp.l2_lambda,) if hp.l2_lambda > 0 else DLAE_LAMBDAS
    best: tuple[tuple[float, float], np.ndarray, DlaeSettings, dict[str, float]] | None = None
    tried = []
    for l2_lambda in lambdas:
        for dropout in DLAE_DROPOUTS:
            run.cancel_point()
            weights = models.dlae_item_weights(gram, l2_lambda, dropout)
            metrics = validation_metrics(held_in, weights.T, validation)
            tried.append({"l2_lambda": l2_lambda, "dropout": dropout, **metrics})
            key = (metrics["recall_at_10"], metrics["ndcg_at_10"])
            if best is None or key > best[0]:
                best = (key, weights, DlaeSettings(l2_lambda, dropout), metrics)
    assert best is not None  # the grid is never empty
    _, weights, choice, metrics = best
    return held_in, weights, choice, metrics, tried


def dlae_weights(split: Split, choice: DlaeSettings) -> tuple[np.ndarray, np.ndarray]:
    """(binary history, DLAE weights) on all of ``split.train`` with the chosen (lambda, dropout)."""
    history = history_matrix.binary_history(split.train_csr(), split.data.n_items)
    return history, models.dlae_item_weights(models.item_gram(history), choice.l2_lambda, choice.dlae_dropout)


class Ease(ClosedFormKind[EaseSettings]):
    """EASE^R (Steck 2019): ridge regression of each movie on all others; lambda is the request's."""

    name = "ease"
    settings_type = EaseSettings
    defaults = dataclasses.replace(COMMON, epochs=1)

    def fit(self, run: TrainingRun, validation: Split) -> TrainedModel:
        run.cancel_point()
        hp = run.hyperparameters
        held_in = history_matrix.binary_history(validation.train_csr(), run.split.data.n_items)
        # Validation only reports on the request's lambda.
        metrics = validation_metrics(held_in, models.ease_item_weights(held_in, hp.l2_lambda).T, validation)
        run.cancel_point()
        return self._solve(run, EaseSettings(hp.l2_lambda), metrics, validation)

    def refit(self, run: TrainingRun, settings: EaseSettings) -> TrainedModel:
        run.cancel_point()
        return self._solve(run, settings, {}, None)

    def _solve(self, run: TrainingRun, settings: EaseSettings, metrics: dict[str, float],
               validation: Split | None) -> TrainedModel:
        history = history_matrix.binary_history(run.split.train_csr(), run.split.data.n_items)
        weights = models.ease_item_weights(history, settings.l2_lambda)
        return self.model(run, history, weights, metrics, settings, validation)


class Dlae(ClosedFormKind[DlaeSettings]):
    """EASE^R with DLAE's popularity-scaled penalty, chosen on validation and refit on all training ratings."""

    name = "dlae"
    settings_type = DlaeSettings
    # The DLAE part's lambda (and its dropout rate, which is not a request knob)
    # is picked on the validation split per run unless the request sets l2_lambda.
    defaults = dataclasses.replace(COMMON, epochs=1, l2_lambda=0.0)

    def fit(self, run: TrainingRun, validation: Split) -> TrainedModel:
        run.cancel_point()
        _, _, choice, metrics, tried = select_dlae(run.hyperparameters, validation, run.split.data.n_items, run)
        run.cancel_point()
        history, weights = dlae_weights(run.split, choice)
        return self.model(run, history, weights, metrics, choice, validation, selection={"candidates": tried})

    def refit(self, run: TrainingRun, settings: DlaeSettings) -> TrainedModel:
        run.cancel_point()
        history, weights = dlae_weights(run.split, settings)
        return self.model(run, history, weights, {}, settings, None)


def _unseen_score_std(user_vectors: np.ndarray, item_vectors: np.ndarray, history: np.ndarray) -> float:
    scores = user_vectors @ item_vectors.T
    return float(np.std(scores[history == 0])) or 1.0


def _blend(ease_history: np.ndarray, ease_weights: np.ndarray, neural_users: np.ndarray, neural_items: np.ndarray,
           weight: float, scales: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate scaled vectors so that the dot product is the weighted score sum."""
    ease_scale, neural_scale = scales
    users = np.hstack([(1.0 - weight) * ease_history / ease_scale, weight * neural_users / neural_scale])
    items = np.hstack([ease_weights.T, neural_items])
    return users.astype(np.float32), items.astype(np.float32)


class EaseBlend(ClosedFormKind[BlendSettings]):
    """The EASE family's best closed form (DLAE) plus the two-tower model, mixed on validation.

    Every choice is made on the validation split carved from the training
    ratings: the two-tower's early-stopping epoch, DLAE's (lambda, dropout)
    (see ``select_dlae``), then the blend weight. Each component's scores are
    divided by their spread over unseen validation items so the weight means
    the same thing whatever the raw score scales are. The DLAE part is then
    refit on all training ratings with the chosen settings. A refit reuses
    every choice, the scales included.
    """

    name = "ease_blend"
    settings_type = BlendSettings
    defaults = dataclasses.replace(COMMON, l2_lambda=0.0)
    neural: ClassVar[TwoTower] = TwoTower()  # its neural part

    def fit(self, run: TrainingRun, validation: Split) -> TrainedModel:
        hp, n_items = run.hyperparameters, run.split.data.n_items
        neural = fit_neural(self.neural, run, validation)
        held_in, held_in_weights, dlae, dlae_metrics, dlae_tried = select_dlae(hp, validation, n_items, run)
        scales = (_unseen_score_std(held_in, held_in_weights.T, held_in),
                  _unseen_score_std(neural.user_vectors, neural.item_vectors, held_in))
        candidates = (hp.blend_weight,) if hp.blend_weight > 0 else BLEND_GRID
        scored = []
        for weight in candidates:
            run.cancel_point()
            metrics = validation_metrics(*_blend(held_in, held_in_weights, neural.user_vectors,
                                                 neural.item_vectors, weight, scales), validation)
            scored.append(((metrics["recall_at_10"], metrics["ndcg_at_10"]), weight, metrics))
        _, weight, metrics = max(scored, key=lambda entry: entry[0])
        settings = BlendSettings(epochs=neural.best_epoch, l2_lambda=dlae.l2_lambda, dlae_dropout=dlae.dlae_dropout,
                                 blend_weight=weight, scales=(float(scales[0]), float(scales[1])))
        selection = {"neural_validation_metrics": neural.validation_metrics, "dlae_validation_metrics": dlae_metrics,
                     "dlae_candidates": dlae_tried,
                     "blend_candidates": [{"blend_weight": w, **m} for _, w, m in scored]}
        return self._mix(run, neural, settings, scales, metrics, selection)

    def refit(self, run: TrainingRun, settings: BlendSettings) -> TrainedModel:
        hp = dataclasses.replace(run.hyperparameters, epochs=settings.epochs)
        neural = fit_neural(self.neural, dataclasses.replace(run, hyperparameters=hp), None)
        return self._mix(run, neural, settings, settings.scales, {}, {})

    def _mix(self, run: TrainingRun, neural: TrainedModel, settings: BlendSettings, scales: tuple[float, float],
             metrics: dict[str, float], selection: dict[str, Any]) -> TrainedModel:
        """The blend of the two-tower ``neural`` and DLAE solved on all of ``run.split.train``."""
        run.cancel_point()
        n_items = run.split.data.n_items
        history, weights = dlae_weights(run.split, DlaeSettings(settings.l2_lambda, settings.dlae_dropout))
        weight = settings.blend_weight
        user_vectors, item_vectors = _blend(history, weights, neural.user_vectors, neural.item_vectors, weight, scales)
        pooled = pooled_encoder(user_vectors[:, n_items:], item_vectors[:, n_items:], run.split.train_csr())
        neural.encoder = QueryEncoder((Part(HISTORY, n_items, (1.0 - weight) / scales[0]), *pooled.parts))
        neural.kind = self.name
        neural.user_vectors, neural.item_vectors = user_vectors, item_vectors
        neural.selection = selection
        neural.settings = dataclasses.replace(settings, epochs=neural.best_epoch)
        neural.validation_metrics = metrics
        neural.train_seconds = run.seconds()
        return neural


class Sequential(ClosedFormKind[SequentialSettings]):
    """The history-aware kind (see ``sequential``); its validation split is carved by time."""

    name = "sequential"
    settings_type = SequentialSettings
    validated_by_time = True
    # History-aware: recency-weighted DLAE plus item-to-next-item transitions;
    # lambda, dropout and the recency settings are chosen on a split carved by time.
    defaults = dataclasses.replace(COMMON, epochs=1, l2_lambda=0.0)

    def fit(self, run: TrainingRun, validation: Split) -> TrainedModel:
        run.cancel_point()
        _, _, dlae, dlae_metrics, dlae_tried = select_dlae(run.hyperparameters, validation,
                                                           run.split.data.n_items, run)
        rules = sequential.select(validation, (dlae.l2_lambda, dlae.dlae_dropout), run.cancel_point)
        choice, metrics, tried = rules["user"]
        visitor, visitor_metrics, _ = rules["visitor"]
        settings = SequentialSettings(dlae.l2_lambda, dlae.dlae_dropout, **choice, visitor=RecencyRule(**visitor))
        selection = {"dlae_validation_metrics": dlae_metrics, "visitor_validation_metrics": visitor_metrics,
                     "candidates": tried, "dlae_candidates": dlae_tried}
        return self._solve(run, settings, metrics, validation, selection)

    def refit(self, run: TrainingRun, settings: SequentialSettings) -> TrainedModel:
        run.cancel_point()
        return self._solve(run, settings, {}, None, {})

    def _solve(self, run: TrainingRun, settings: SequentialSettings, metrics: dict[str, float],
               validation: Split | None, selection: dict[str, Any]) -> TrainedModel:
        run.cancel_point()
        user_vectors, item_vectors, encoder = sequential.fit(run.split, settings.l2_lambda, settings.dlae_dropout,
                                                             settings.users, settings.visitor)
        return self.model(run, user_vectors, item_vectors.T, metrics, settings, validation, selection=selection,
                          encoder=encoder)
