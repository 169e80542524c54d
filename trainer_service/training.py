"""Training entry point shared by the gRPC trainer and the quality benchmark.

Early stopping and model selection look only at a validation set carved from
the split's training ratings, so the split's test set stays untouched until the
caller evaluates. Runs are seeded so the same request trains the same model.

The neural kinds can also run as one replica of a data-parallel run (see
``distributed``): the caller passes a ``tf.distribute`` strategy, the model
is built under its scope, and every worker runs this same code on the same
data in the same seeded order while the strategy hands each worker its part
of every global batch. Only the chief (rank 0) validates, decides when to stop
and exports vectors; the others follow its decision.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from movierec_common.session_query import HISTORY, Part, QueryEncoder, history_encoder, pooled_encoder
from movierec_common.tfenv import tensorflow

from . import models, sequential
from .data import Split, carve_validation
from .evaluation import evaluate_scores
from .hyperparams import MODEL_KINDS, Hyperparameters

tf = tensorflow()

SELECTION_METRIC = "recall_at_10"


ENGINE_IN_PROCESS = "in_process"


def in_process_distribution() -> dict:
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
    validation_split: str = ""          # what validation_metrics were measured on
    extra: dict = field(default_factory=dict)  # kind-specific facts, e.g. ease_blend's chosen weight
    # How it was trained: engine ("in_process" or "ray_train"), workers, num_replicas_in_sync.
    distribution: dict = field(default_factory=in_process_distribution)
    # What validation chose, enough to train the same model again on more data
    # (``train_model(..., refit_settings=...)``): epochs, lambda, dropout, weights.
    settings: dict = field(default_factory=dict)
    # How serving turns a history into a query for this model (session_query).
    encoder: QueryEncoder | None = None
    refit: bool = False  # trained on given settings, without a validation split


class TrainingCancelled(Exception):
    """Raised when ``should_stop`` asked for the run to end; nothing is returned."""


# Scores computed per validation pass (users x movies). MovieLens 100K and 1M
# are validated on every user; a million-movie catalogue on a fixed sample of
# 500, so early stopping costs seconds per epoch, not minutes.
VALIDATION_MAX_SCORES = 500_000_000


def _validation_metrics(user_vectors, item_vectors, validation: Split) -> dict[str, float]:
    metrics = evaluate_scores(user_vectors, item_vectors, validation.train_csr(), validation.test_csr(), ks=(10, 50),
                              max_scores=VALIDATION_MAX_SCORES)
    return {k: v for k, v in metrics.items() if k in ("recall_at_10", "ndcg_at_10", "recall_at_50")}


def is_chief(strategy) -> bool:
    """Rank 0 of a multi-worker strategy, or the only process of any other."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver is None or resolver.task_id in (None, 0)


def _follow_chief(strategy, decision: bool) -> bool:
    """The chief's decision, on every worker.

    Workers that disagree on when ``fit`` ends deadlock in the next
    collective, so only the chief decides: the others add 0 to its 0 or 1.
    """
    if strategy.num_replicas_in_sync == 1:
        return decision
    vote = tf.constant(1.0 if decision and is_chief(strategy) else 0.0)
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(vote)), axis=None)
    return bool(total.numpy() > 0)


class _Supervisor(tf.keras.callbacks.Callback):
    """Cancellation per batch, validation + early stopping + progress per epoch."""

    def __init__(self, model, validation: Split, hp: Hyperparameters, steps_per_epoch: int, started: float,
                 on_epoch, should_stop, strategy):
        super().__init__()
        self.strategy = strategy
        self.chief = is_chief(strategy)
        self.vector_model = model
        self.validation = validation
        self.hp = hp
        self.steps_per_epoch = steps_per_epoch
        self.started = started
        self.on_epoch = on_epoch
        self.should_stop = should_stop
        self.losses: list[float] = []
        self.history: list[dict[str, float]] = []
        self.best_score = -np.inf
        self.best_epoch = 0
        self.best_weights = None
        self.steps = 0
        self._epoch_loss_sum = 0.0
        self._epoch_batches = 0

    def _check_cancel(self):
        if self.should_stop is not None and self.should_stop():
            raise TrainingCancelled("training cancelled on request")

    def on_train_batch_begin(self, batch, logs=None):
        self._check_cancel()

    def on_train_batch_end(self, batch, logs=None):
        # tfrs.Model reports the last batch's loss, not a running mean, so average here.
        self.steps += 1
        self._epoch_loss_sum += float(logs["loss"])
        self._epoch_batches += 1

    def on_epoch_end(self, epoch, logs=None):
        # Under a strategy Keras sums the replicas' losses, each already divided
        # by the global batch, so this is the global batch's mean on every worker.
        self.losses.append(self._epoch_loss_sum / max(self._epoch_batches, 1))
        self._epoch_loss_sum, self._epoch_batches = 0.0, 0
        stop = False
        if self.validation is None:  # a refit: the epoch count was chosen already
            self.best_epoch = epoch + 1
            self._report(epoch, {})
        elif self.chief:
            stop = self._validate(epoch)
        if _follow_chief(self.strategy, stop):
            self.model.stop_training = True
        self._check_cancel()

    def _validate(self, epoch) -> bool:
        """Validation, model selection and progress; returns whether to stop."""
        vectors = self.vector_model.export_vectors(self.validation.train_csr())
        metrics = _validation_metrics(*vectors, self.validation)
        self.history.append(metrics)
        stop = False
        if metrics[SELECTION_METRIC] > self.best_score:
            self.best_score = metrics[SELECTION_METRIC]
            self.best_epoch = epoch + 1
            self.best_weights = self.vector_model.get_weights()
        elif epoch + 1 - self.best_epoch >= self.hp.patience or not np.isfinite(self.losses[-1]):
            # A diverged run (e.g. a too-high learning rate) stops; the best weights so far are kept.
            stop = True
        self._report(epoch, metrics)
        return stop

    def _report(self, epoch, metrics) -> None:
        if self.on_epoch is not None and self.chief:
            self.on_epoch(EpochReport(
                epoch=epoch + 1, epochs=self.hp.epochs, loss=self.losses[-1],
                elapsed_seconds=time.monotonic() - self.started, validation=metrics,
                step=self.steps, steps_per_epoch=self.steps_per_epoch,
            ))


# Up to this many examples tf.data shuffles them all each epoch (its buffer
# holds one tensor per example, which past a few million costs gigabytes and
# minutes to fill). Beyond it the arrays are permuted once in numpy and the
# order of whole batches is reshuffled every epoch.
FULL_SHUFFLE_MAX_EXAMPLES = 2_000_000


def training_dataset(features: dict[str, np.ndarray], batch_size: int, seed: int,
                     shard_by_data: bool = False) -> tf.data.Dataset:
    """Batches of ``features`` streamed from the arrays, in a seeded order that changes every epoch.

    ``batch_size`` is the global batch. With ``shard_by_data`` every worker
    builds this same dataset (same seed, same order) and a multi-worker
    strategy splits each global batch into per-worker batches of
    ``batch_size / workers`` and keeps this worker's one, so N workers take
    the same optimisation steps over the same batches as one worker would.
    (One exception: past models.SAMPLED_SOFTMAX_MIN_ITEMS the in-batch negatives of
    each worker come from its own part of the batch, so the objective is N
    smaller softmaxes rather than one; gathering candidates across workers
    would restore it and is not done yet.)
    """
    n_examples = len(next(iter(features.values())))
    dataset = _batches(features, n_examples, batch_size, seed)
    if shard_by_data:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dataset = dataset.with_options(options)
    return dataset


def _batches(features, n_examples: int, batch_size: int, seed: int) -> tf.data.Dataset:
    if n_examples <= FULL_SHUFFLE_MAX_EXAMPLES:
        return (tf.data.Dataset.from_tensor_slices(features)
                .shuffle(n_examples, seed=seed, reshuffle_each_iteration=True)
                .batch(batch_size)
                .prefetch(tf.data.AUTOTUNE))
    order = np.random.default_rng(seed).permutation(n_examples)
    columns = {name: tf.constant(values[order]) for name, values in features.items()}
    n_batches = int(np.ceil(n_examples / batch_size))

    def batch(index):
        start = index * batch_size
        return {name: column[start:start + batch_size] for name, column in columns.items()}

    return (tf.data.Dataset.range(n_batches)
            .shuffle(n_batches, seed=seed, reshuffle_each_iteration=True)
            .map(batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def _train_neural(kind, split, validation, hp, seed, on_epoch, should_stop, started, strategy=None) -> TrainedModel:
    """Fits on ``validation.train`` with early stopping on ``validation``, or, for a
    refit (``validation`` None), on all of ``split.train`` for ``hp.epochs`` epochs."""
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        model = models.build_model(kind, split.data.n_users, split.data.n_items, hp)
        model.sampling_seed = seed
        # XLA roughly halves the step time on CPU, mostly in the optimizer
        # update; it has no CPU kernel for the multi-worker collectives in that
        # update (CollectiveGatherV2), so several workers step without it.
        model.compile(
            optimizer=tf.keras.optimizers.AdamW(learning_rate=hp.learning_rate, weight_decay=hp.weight_decay),
            jit_compile=replicas == 1,
        )
    fitted_on = split if validation is None else validation
    train = fitted_on.train
    features = model.training_examples(split.data.users[train], split.data.items[train], fitted_on.train_csr())
    n_examples = len(next(iter(features.values())))
    dataset = training_dataset(features, hp.batch_size, seed, shard_by_data=replicas > 1)
    del features
    steps = int(np.ceil(n_examples / hp.batch_size))
    supervisor = _Supervisor(model, validation, hp, steps, started, on_epoch, should_stop, strategy)
    supervisor._check_cancel()
    model.fit(dataset, epochs=hp.epochs, verbose=0, callbacks=[supervisor])
    user_vectors = item_vectors = np.zeros((0, 0), dtype=np.float32)
    encoder = None
    if supervisor.chief:  # the other workers hold the same weights; only the chief's result is kept
        if supervisor.best_weights is not None:
            model.set_weights(supervisor.best_weights)
        # Users' full training history (validation ratings included) is what the
        # vectors should reflect for serving.
        user_vectors, item_vectors = model.export_vectors(split.train_csr())
        encoder = pooled_encoder(user_vectors, item_vectors, split.train_csr(),
                                  fixed=((user_vectors.shape[1] - 1, 1.0),) if kind == "bpr" else ())
    best = supervisor.best_epoch
    return TrainedModel(
        kind=kind, user_vectors=user_vectors.astype(np.float32), item_vectors=item_vectors.astype(np.float32),
        loss_history=supervisor.losses, validation_history=supervisor.history,
        validation_metrics=supervisor.history[best - 1] if best and supervisor.history else {},
        epochs_run=len(supervisor.losses), best_epoch=best,
        train_seconds=time.monotonic() - started, hyperparameters=hp,
        validation_split="" if validation is None else validation.name,
        extra={"softmax": "sampled" if model.sampled else "full"} if isinstance(model, models.TwoTowerModel) else {},
        distribution={**in_process_distribution(), "num_replicas_in_sync": replicas},
        settings={"epochs": best}, encoder=encoder, refit=validation is None,
    )


def _train_ease(kind, split, validation, hp, seed, on_epoch, should_stop, started, settings=None) -> TrainedModel:
    del seed
    _cancel_point(should_stop)
    n_items = split.data.n_items
    metrics = {}
    if settings is None:  # lambda is the request's; validation only reports on it
        held_in = models.binary_history(validation.train_csr(), n_items)
        metrics = _validation_metrics(held_in, models.ease_item_weights(held_in, hp.l2_lambda).T, validation)
        _cancel_point(should_stop)
    history = models.binary_history(split.train_csr(), n_items)
    weights = models.ease_item_weights(history, hp.l2_lambda)
    return _closed_form_model(kind, history, weights, metrics, hp, validation, started, on_epoch,
                              settings={"l2_lambda": hp.l2_lambda})


def _closed_form_model(kind, history, weights, metrics, hp, validation, started, on_epoch, extra=None,
                       settings=None, encoder=None) -> TrainedModel:
    """A closed-form kind's result: one "epoch", scores = history row . weight column."""
    elapsed = time.monotonic() - started
    if on_epoch is not None:
        on_epoch(EpochReport(epoch=1, epochs=1, loss=0.0, elapsed_seconds=elapsed, validation=metrics,
                             step=1, steps_per_epoch=1, has_loss=False))
    return TrainedModel(
        kind=kind, user_vectors=history, item_vectors=np.ascontiguousarray(weights.T),
        loss_history=[], validation_history=[metrics] if metrics else [], validation_metrics=metrics,
        epochs_run=1, best_epoch=1, train_seconds=elapsed, hyperparameters=hp,
        validation_split="" if validation is None else validation.name,
        extra=extra or {}, settings=settings or {},
        encoder=encoder or history_encoder(history.shape[1]), refit=validation is None,
    )


BLEND_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# DLAE's (ridge penalty, dropout rate) candidates, searched on the validation
# split. On ua.base validation the good region is lambda 150-500 with dropout
# 0.5-0.67 and flat inside it; six points keep the search to a few seconds.
# (While exploring, ua.test figures were printed next to the validation ones;
# the grid's range came from validation, and each run picks its point from it
# on validation only.)
DLAE_LAMBDAS = (150.0, 300.0, 500.0)
DLAE_DROPOUTS = (0.5, 0.67)


def _cancel_point(should_stop):
    if should_stop is not None and should_stop():
        raise TrainingCancelled("training cancelled on request")


def select_dlae(hp, validation: Split, n_items: int, should_stop):
    """Choose DLAE's (lambda, dropout) on ``validation``; a caller-set ``l2_lambda`` fixes lambda.

    Returns the held-in history, the chosen held-in weights, the choice, its
    validation metrics and every candidate's metrics (for the run's record).
    """
    held_in = models.binary_history(validation.train_csr(), n_items)
    gram = models.item_gram(held_in)
    lambdas = (hp.l2_lambda,) if hp.l2_lambda > 0 else DLAE_LAMBDAS
    best, tried = None, []
    for l2_lambda in lambdas:
        for dropout in DLAE_DROPOUTS:
            _cancel_point(should_stop)
            weights = models.dlae_item_weights(gram, l2_lambda, dropout)
            metrics = _validation_metrics(held_in, weights.T, validation)
            tried.append({"l2_lambda": l2_lambda, "dropout": dropout, **metrics})
            key = (metrics["recall_at_10"], metrics["ndcg_at_10"])
            if best is None or key > best[0]:
                best = (key, weights, (l2_lambda, dropout), metrics)
    _, weights, choice, metrics = best
    return held_in, weights, choice, metrics, tried


def _train_dlae(kind, split, validation, hp, seed, on_epoch, should_stop, started, settings=None) -> TrainedModel:
    """EASE^R with DLAE's popularity-scaled penalty, chosen on validation and refit on all training ratings."""
    del seed
    _cancel_point(should_stop)
    n_items = split.data.n_items
    if settings is None:
        _, _, (l2_lambda, dropout), metrics, tried = select_dlae(hp, validation, n_items, should_stop)
        extra = {"candidates": tried}
    else:
        l2_lambda, dropout, metrics, extra = settings["l2_lambda"], settings["dlae_dropout"], {}, {}
    _cancel_point(should_stop)
    history = models.binary_history(split.train_csr(), n_items)
    weights = models.dlae_item_weights(models.item_gram(history), l2_lambda, dropout)
    chosen = {"l2_lambda": l2_lambda, "dlae_dropout": dropout}
    return _closed_form_model(kind, history, weights, metrics, hp, validation, started, on_epoch,
                              extra={**chosen, **extra}, settings=chosen)


def _unseen_score_std(user_vectors, item_vectors, history) -> float:
    scores = user_vectors @ item_vectors.T
    return float(np.std(scores[history == 0])) or 1.0


def _blend(ease_history, ease_weights, neural_users, neural_items, weight, scales):
    """Concatenate scaled vectors so that the dot product is the weighted score sum."""
    ease_scale, neural_scale = scales
    users = np.hstack([(1.0 - weight) * ease_history / ease_scale, weight * neural_users / neural_scale])
    items = np.hstack([ease_weights.T, neural_items])
    return users.astype(np.float32), items.astype(np.float32)


def _train_ease_blend(kind, split, validation, hp, seed, on_epoch, should_stop, started,
                      settings=None) -> TrainedModel:
    """The EASE family's best closed form (DLAE) plus the two-tower model, mixed on validation.

    Every choice is made on the validation split carved from the training
    ratings: the two-tower's early-stopping epoch, DLAE's (lambda, dropout)
    (see ``select_dlae``), then the blend weight. Each component's scores are
    divided by their spread over unseen validation items so the weight means
    the same thing whatever the raw score scales are. The DLAE part is then
    refit on all training ratings with the chosen settings. A refit
    (``settings`` given) reuses every choice, the scales included.
    """
    n_items = split.data.n_items
    if settings is None:
        neural = _train_neural("two_tower", split, validation, hp, seed, on_epoch, should_stop, started)
        held_in, held_in_weights, (l2_lambda, dropout), dlae_metrics, dlae_tried = select_dlae(
            hp, validation, n_items, should_stop)
        scales = (_unseen_score_std(held_in, held_in_weights.T, held_in),
                  _unseen_score_std(neural.user_vectors, neural.item_vectors, held_in))
        candidates = (hp.blend_weight,) if hp.blend_weight > 0 else BLEND_GRID
        scored = []
        for weight in candidates:
            _cancel_point(should_stop)
            metrics = _validation_metrics(*_blend(held_in, held_in_weights, neural.user_vectors,
                                                  neural.item_vectors, weight, scales), validation)
            scored.append(((metrics["recall_at_10"], metrics["ndcg_at_10"]), weight, metrics))
        _, weight, metrics = max(scored, key=lambda entry: entry[0])
        extra = {"neural_validation_metrics": neural.validation_metrics, "dlae_validation_metrics": dlae_metrics,
                 "dlae_candidates": dlae_tried,
                 "blend_candidates": [{"blend_weight": w, **m} for _, w, m in scored]}
    else:
        neural = _train_neural("two_tower", split, None, dataclasses.replace(hp, epochs=settings["epochs"]),
                               seed, on_epoch, should_stop, started)
        l2_lambda, dropout, weight = settings["l2_lambda"], settings["dlae_dropout"], settings["blend_weight"]
        scales, metrics, extra = tuple(settings["scales"]), {}, {}
    _cancel_point(should_stop)
    history = models.binary_history(split.train_csr(), n_items)
    weights = models.dlae_item_weights(models.item_gram(history), l2_lambda, dropout)
    user_vectors, item_vectors = _blend(history, weights, neural.user_vectors, neural.item_vectors, weight, scales)
    chosen = {"epochs": neural.best_epoch, "l2_lambda": l2_lambda, "dlae_dropout": dropout, "blend_weight": weight,
              "scales": [float(scales[0]), float(scales[1])]}
    pooled = pooled_encoder(user_vectors[:, n_items:], item_vectors[:, n_items:], split.train_csr())
    neural.encoder = QueryEncoder((Part(HISTORY, n_items, (1.0 - weight) / scales[0]), *pooled.parts))
    neural.kind = kind
    neural.user_vectors, neural.item_vectors = user_vectors, item_vectors
    neural.extra = {**chosen, **extra}
    neural.settings = chosen
    neural.validation_metrics = metrics
    neural.train_seconds = time.monotonic() - started
    return neural


def _train_sequential(kind, split, validation, hp, seed, on_epoch, should_stop, started,
                      settings=None) -> TrainedModel:
    """The history-aware kind (see ``sequential``); ``validation`` is carved by time."""
    del seed
    _cancel_point(should_stop)
    extra = {}
    metrics = {}
    if settings is None:
        _, _, dlae_choice, dlae_metrics, dlae_tried = select_dlae(hp, validation, split.data.n_items, should_stop)
        rules = sequential.select(validation, dlae_choice, lambda: _cancel_point(should_stop))
        choice, metrics, tried = rules["user"]
        visitor, visitor_metrics, _ = rules["visitor"]
        settings = {"l2_lambda": dlae_choice[0], "dlae_dropout": dlae_choice[1], **choice, "visitor": visitor}
        extra = {"dlae_validation_metrics": dlae_metrics, "visitor_validation_metrics": visitor_metrics,
                 "candidates": tried, "dlae_candidates": dlae_tried}
    _cancel_point(should_stop)
    user_vectors, item_vectors, encoder = sequential.fit(
        split, settings["l2_lambda"], settings["dlae_dropout"], settings["decay"], settings["floor"],
        settings["transition_decay"], settings["transition_weight"], settings.get("visitor"))
    return _closed_form_model(kind, user_vectors, item_vectors.T, metrics, hp, validation, started, on_epoch,
                              extra={**settings, **extra}, settings=dict(settings), encoder=encoder)


# Kinds whose validation split is each user's newest ratings rather than random ones.
TIME_VALIDATED_KINDS = ("sequential",)


# The closed-form kinds hold a few dense I x I float64 matrices: 20k movies is
# about 3.2 GB each, the most one request may ask of this machine.
MAX_CLOSED_FORM_ITEMS = 20_000
# Kinds that train in closed form instead of through the neural fit loop.
_CLOSED_FORM_TRAINERS = {"ease": _train_ease, "dlae": _train_dlae, "ease_blend": _train_ease_blend,
                         "sequential": _train_sequential}
CLOSED_FORM_KINDS = tuple(_CLOSED_FORM_TRAINERS)


def catalogue_refusal(kind: str, n_items: int) -> str:
    """Why ``kind`` cannot train on ``n_items`` movies, naming the kinds that can; "" when it can."""
    if kind not in CLOSED_FORM_KINDS or n_items <= MAX_CLOSED_FORM_ITEMS:
        return ""
    fitting = [k for k in MODEL_KINDS if k not in CLOSED_FORM_KINDS]
    return (f"{kind} inverts a dense movie-by-movie matrix and supports at most {MAX_CLOSED_FORM_ITEMS:,} movies; "
            f"this dataset has {n_items:,}. Kinds that fit this catalogue: {', '.join(fitting)}")


def train_model(kind: str, split: Split, hparams: Hyperparameters, seed: int,
                on_epoch: Callable[[EpochReport], None] | None = None,
                should_stop: Callable[[], bool] | None = None,
                strategy: tf.distribute.Strategy | None = None,
                refit_settings: dict | None = None) -> TrainedModel:
    """Train ``kind`` on ``split``'s training ratings and export user/item vectors.

    Settings (epochs, lambda, dropout, weights) are chosen on a validation
    split carved from the training ratings and returned in ``settings``.
    Given ``refit_settings`` (a previous run's ``settings``) nothing is
    chosen: the model is trained on all of ``split``'s training ratings with
    them, which is how a job publishes a model that has seen its holdout.

    With a multi-worker ``strategy`` (neural kinds only) this is one worker's
    part of a data-parallel run; only the chief's result holds vectors.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}")
    refusal = catalogue_refusal(kind, split.data.n_items)
    if refusal:
        raise ValueError(refusal)
    if strategy is not None and kind in CLOSED_FORM_KINDS:
        raise ValueError(f"{kind} trains in closed form on one worker; it takes no distribution strategy")
    started = time.monotonic()
    # The same seed on every worker: the same initial weights and the same data order.
    tf.keras.utils.set_random_seed(seed)
    validation = None
    if refit_settings is None:
        validation = carve_validation(split, hparams.validation_size, seed, by_time=kind in TIME_VALIDATED_KINDS)
    if kind in CLOSED_FORM_KINDS:
        return _CLOSED_FORM_TRAINERS[kind](kind, split, validation, hparams, seed, on_epoch, should_stop, started,
                                           refit_settings)
    if refit_settings is not None:
        hparams = dataclasses.replace(hparams, epochs=max(1, int(refit_settings["epochs"])))
    return _train_neural(kind, split, validation, hparams, seed, on_epoch, should_stop, started, strategy)
