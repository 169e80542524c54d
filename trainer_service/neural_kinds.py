"""The neural kinds (two_tower, two_tower_dropout, bpr) and the Keras fit loop they share.

A neural kind's settings are one number: the epoch at which validation
Recall@10 peaked. The fit loop trains with early stopping on the validation
split and keeps the best epoch's weights; the refit trains that many epochs
on every rating.

They train with AdamW; on one worker, embedding tables of a large catalogue
(or user base) get lazy updates of the batch's rows only, and several steps
run per call of the compiled train function (see ``embedding_optimizer`` and
``LARGE_RUN_STEPS_PER_EXECUTION``); metadata.json's ``selection`` says which.

The neural kinds can also run as one replica of a data-parallel run (see
``distributed``): the run carries a ``tf.distribute`` strategy, the model is
built under its scope, and every worker runs this same code on the same data
in the same seeded order while the strategy hands each worker its part of
every global batch. Only the chief (rank 0) validates, decides when to stop
and exports vectors; the others follow its decision.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from movierec_common.session_query import pooled_encoder
from trainer_service import embedding_optimizer, models, popularity_prior
from trainer_service.hyperparams import COMMON, Hyperparameters
from trainer_service.kind_settings import NeuralSettings
from trainer_service.model_kind import (
    SELECTION_METRIC,
    EpochReport,
    ModelKind,
    TrainedModel,
    TrainingRun,
    in_process_distribution,
    tf,
    validation_metrics,
)
from trainer_service.ratings import Split

# Up to this many examples tf.data shuffles them all each epoch (its buffer
# holds one tensor per example, which past a few million costs gigabytes and
# minutes to fill). Beyond it the arrays are permuted once in numpy and the
# order of whole batches is reshuffled every epoch.
FULL_SHUFFLE_MAX_EXAMPLES = 2_000_000
# Training steps per call of the compiled train function when the run is large
# (its tables get lazy updates). Each call costs a Python round trip, the
# callbacks and a read of the loss that waits for the step to finish, which
# matters more once a step is ~20 ms instead of ~75 ms (benchmarks/train_speed.py
# --part epoch --variants lazy,lazy-spe1 compares; on the shared machine the
# difference was not separable from the load yet). Cancellation and the loss
# are then checked once per call (16 steps, well under a second), and an
# epoch's loss is the mean of every 16th batch's. Small runs keep 1: their
# loss history stays the mean of every batch.
LARGE_RUN_STEPS_PER_EXECUTION = 16
# Whether a large run (lazy table updates) always streams whole batches cut from
# one numpy permutation (see _batches) rather than shuffling examples in tf.data.
# On the movierec-synth million-movie set (1.7M training examples) one epoch took
# 36 s against 43 s with the per-example shuffle (AdamW's: 77 s), Recall@10 0.095 vs 0.093.
LARGE_RUN_WHOLE_BATCHES = True
# Whether a large run (lazy table updates) compiles its steps with XLA. XLA's
# gain was fusing the dense AdamW update of whole tables, which lazy runs no
# longer do; XLA keeps the row updates sparse (scatters, no copy of the
# table). With and without XLA measured alike within the shared machine's
# noise (--variants lazy,lazy-nojit), so XLA stays, as for every other run.
LARGE_RUN_JIT_COMPILE = True


def is_chief(strategy: Any) -> bool:
    """Rank 0 of a multi-worker strategy, or the only process of any other."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver is None or resolver.task_id in (None, 0)


def _follow_chief(strategy: Any, decision: bool) -> bool:
    """The chief's decision, on every worker.

    Workers that disagree on when ``fit`` ends deadlock in the next
    collective, so only the chief decides: the others add 0 to its 0 or 1.
    """
    if strategy.num_replicas_in_sync == 1:
        return decision
    vote = tf.constant(1.0 if decision and is_chief(strategy) else 0.0)
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(vote)), axis=None)
    return bool(total.numpy() > 0)


_Callback: Any = tf.keras.callbacks.Callback  # TensorFlow ships no types


class _Supervisor(_Callback):
    """Cancellation per batch, validation + early stopping + progress per epoch."""

    def __init__(self, model: models.VectorModel, run: TrainingRun, validation: Split | None, steps_per_epoch: int,
                 strategy: Any):
        super().__init__()
        self.strategy = strategy
        self.chief = is_chief(strategy)
        self.vector_model = model
        self.run = run
        self.validation = validation
        self.hp = run.hyperparameters
        self.steps_per_epoch = steps_per_epoch
        self.losses: list[float] = []
        self.history: list[dict[str, float]] = []
        self.best_score = -np.inf
        self.best_epoch = 0
        self.best_weights: list[Any] | None = None
        self.steps = 0
        self._epoch_loss_sum = 0.0
        self._epoch_batches = 0
        self._execution_start = 0

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._execution_start = batch
        self.run.cancel_point()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # Keras calls these once per execution: batches begin..batch (one batch unless
        # steps_per_execution > 1). tfrs.Model reports the last batch's loss, not a
        # running mean, so average here; with several batches per execution the
        # last one stands for all of them.
        batches = batch - self._execution_start + 1
        self.steps += batches
        self._epoch_loss_sum += float((logs or {})["loss"]) * batches
        self._epoch_batches += batches

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # Under a strategy Keras sums the replicas' losses, each already divided
        # by the global batch, so this is the global batch's mean on every worker.
        self.losses.append(self._epoch_loss_sum / max(self._epoch_batches, 1))
        self._epoch_loss_sum, self._epoch_batches = 0.0, 0
        # Deferred tables hold AdamW's weights only once brought up to date; validation,
        # the best weights and the export all read them after this.
        embedding_optimizer.catch_up(self.vector_model.optimizer)
        stop = False
        if self.validation is None:  # a refit: the epoch count was chosen already
            self.best_epoch = epoch + 1
            self._report(epoch, {})
        elif self.chief:
            stop = self._validate(epoch, self.validation)
        if _follow_chief(self.strategy, stop):
            self.model.stop_training = True
        self.run.cancel_point()

    def _validate(self, epoch: int, validation: Split) -> bool:
        """Validation, model selection and progress; returns whether to stop."""
        vectors = self.vector_model.export_vectors(validation.train_csr())
        metrics = validation_metrics(*vectors, validation)
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

    def _report(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.run.on_epoch is not None and self.chief:
            self.run.on_epoch(EpochReport(
                epoch=epoch + 1, epochs=self.hp.epochs, loss=self.losses[-1],
                elapsed_seconds=self.run.seconds(), validation=metrics,
                step=self.steps, steps_per_epoch=self.steps_per_epoch,
            ))


def training_dataset(features: dict[str, np.ndarray], batch_size: int, seed: int,
                     shard_by_data: bool = False, whole_batches: bool = False) -> Any:
    """Batches of ``features`` streamed from the arrays (a ``tf.data.Dataset``), in a seeded order that
    changes every epoch.

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
    dataset = _batches(features, n_examples, batch_size, seed, whole_batches)
    if shard_by_data:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dataset = dataset.with_options(options)
    return dataset


def _batches(features: dict[str, np.ndarray], n_examples: int, batch_size: int, seed: int,
             whole_batches: bool = False) -> Any:
    """Per-example shuffling each epoch, or (past FULL_SHUFFLE_MAX_EXAMPLES, or asked for
    ``whole_batches``) one numpy permutation and the batches' order reshuffled each epoch."""
    if n_examples <= FULL_SHUFFLE_MAX_EXAMPLES and not whole_batches:
        return (tf.data.Dataset.from_tensor_slices(features)
                .shuffle(n_examples, seed=seed, reshuffle_each_iteration=True)
                .batch(batch_size)
                .prefetch(tf.data.AUTOTUNE))
    order = np.random.default_rng(seed).permutation(n_examples)
    columns = {name: tf.constant(values[order]) for name, values in features.items()}
    n_batches = int(np.ceil(n_examples / batch_size))

    def batch(index: Any) -> dict[str, Any]:
        start = index * batch_size
        return {name: column[start:start + batch_size] for name, column in columns.items()}

    return (tf.data.Dataset.range(n_batches)
            .shuffle(n_batches, seed=seed, reshuffle_each_iteration=True)
            .map(batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


class NeuralKind(ModelKind[NeuralSettings]):
    """A kind trained by gradient descent through Keras' fit loop, on one worker or several."""

    settings_type = NeuralSettings
    model_class: ClassVar[type[models.VectorModel]]

    def build(self, n_users: int, n_items: int, hp: Hyperparameters) -> models.VectorModel:
        return self.model_class(n_users, n_items, hp)

    def fixed_query_dims(self, width: int) -> tuple[tuple[int, float], ...]:
        """Dimensions constant in every user vector (value), which a session's query keeps as they are."""
        return ()

    def fit(self, run: TrainingRun, validation: Split) -> TrainedModel:
        return fit_neural(self, run, validation)

    def refit(self, run: TrainingRun, settings: NeuralSettings) -> TrainedModel:
        hp = dataclasses.replace(run.hyperparameters, epochs=max(1, int(settings.epochs)))
        return fit_neural(self, dataclasses.replace(run, hyperparameters=hp), None,
                          popularity_gamma=settings.popularity_prior)


def fit_neural(kind: NeuralKind, run: TrainingRun, validation: Split | None,
               popularity_gamma: float = 0.0) -> TrainedModel:
    """Fits on ``validation.train`` with early stopping on ``validation``, or, for a
    refit (``validation`` None), on all of ``run.split.train`` for ``hp.epochs`` epochs.

    On the two-tower's sampled (cosine) path the movie vectors carry a popularity
    prior (``popularity_prior``): chosen on ``validation``, or ``popularity_gamma``
    (the evaluation run's choice) for a refit."""
    split, hp, seed = run.split, run.hyperparameters, run.seed
    strategy = run.strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        model = kind.build(split.data.n_users, split.data.n_items, hp)
        model.sampling_seed = seed
        # XLA roughly halves the step time on CPU, mostly in the optimizer
        # update; it has no CPU kernel for the multi-worker collectives in that
        # update (CollectiveGatherV2), so several workers step without it.
        # Large embedding tables get lazy (batch-rows-only) updates; see embedding_optimizer.
        optimizer = embedding_optimizer.choose(model, hp.learning_rate, hp.weight_decay, replicas)
        model.compile(optimizer=optimizer.optimizer,
                      jit_compile=replicas == 1 and (LARGE_RUN_JIT_COMPILE or not optimizer.lazy),
                      steps_per_execution=LARGE_RUN_STEPS_PER_EXECUTION if optimizer.lazy else 1)
    fitted_on = split if validation is None else validation
    train = fitted_on.train
    features = model.training_examples(split.data.users[train], split.data.items[train], fitted_on.train_csr())
    n_examples = len(next(iter(features.values())))
    # A large run's steps are cheap enough that tf.data's per-example shuffle and
    # batching of up to 2M examples would be a large share of them; it takes whole batches.
    dataset = training_dataset(features, hp.batch_size, seed, shard_by_data=replicas > 1,
                               whole_batches=optimizer.lazy and LARGE_RUN_WHOLE_BATCHES)
    del features
    with strategy.scope():
        embedding_optimizer.build_before_training(model, optimizer, dataset)
    steps = int(np.ceil(n_examples / hp.batch_size))
    supervisor = _Supervisor(model, run, validation, steps, strategy)
    run.cancel_point()
    model.fit(dataset, epochs=hp.epochs, verbose=0, callbacks=[supervisor])
    user_vectors = item_vectors = np.zeros((0, 0), dtype=np.float32)
    encoder = None
    prior_choice: dict[str, float] = {}  # validation Recall@10 per popularity-prior gamma, when one was chosen
    if supervisor.chief:  # the other workers hold the same weights; only the chief's result is kept
        if supervisor.best_weights is not None:
            model.set_weights(supervisor.best_weights)
        # Users' full training history (validation ratings included) is what the
        # vectors should reflect for serving.
        user_vectors, item_vectors = model.export_vectors(split.train_csr())
        if isinstance(model, models.TwoTowerModel) and model.sampled:
            if validation is not None:
                best_metrics = supervisor.history[supervisor.best_epoch - 1] if supervisor.best_epoch else None
                # The two-tower's vectors do not depend on the history they are exported with (its towers
                # read ids), so these are the vectors validation measured at the best epoch.
                popularity_gamma, prior_choice = popularity_prior.choose(
                    user_vectors, item_vectors, validation, unscaled=best_metrics)
            item_vectors = popularity_prior.apply(item_vectors, popularity_prior.rating_counts(split, split.train),
                                                  popularity_gamma)
        encoder = pooled_encoder(user_vectors, item_vectors, split.train_csr(),
                                 fixed=kind.fixed_query_dims(user_vectors.shape[1]))
    best = supervisor.best_epoch
    return TrainedModel(
        kind=kind.name, user_vectors=user_vectors.astype(np.float32), item_vectors=item_vectors.astype(np.float32),
        loss_history=supervisor.losses, validation_history=supervisor.history,
        validation_metrics=supervisor.history[best - 1] if best and supervisor.history else {},
        epochs_run=len(supervisor.losses), best_epoch=best,
        train_seconds=run.seconds(), hyperparameters=hp,
        validation_split="" if validation is None else validation.name,
        selection={**({"softmax": "sampled" if model.sampled else "full"}
                      if isinstance(model, models.TwoTowerModel) else {}),
                   **({"popularity_prior": prior_choice} if prior_choice else {}),
                   "optimizer": optimizer.description},
        distribution={**in_process_distribution(), "num_replicas_in_sync": replicas},
        settings=NeuralSettings(epochs=best, popularity_prior=popularity_gamma), encoder=encoder,
        refit=validation is None,
    )


class TwoTower(NeuralKind):
    """User-id and movie-id towers trained with a softmax over movies (the student design's Model-1)."""

    name = "two_tower"
    defaults = COMMON
    model_class = models.TwoTowerModel


class TwoTowerDropout(TwoTower):
    """The two-tower with dropout on the tower outputs (Model-2); active in training only."""

    name = "two_tower_dropout"
    defaults = dataclasses.replace(COMMON, dropout_rate=0.2)


class Bpr(NeuralKind):
    """Matrix factorisation with an item bias, trained with the BPR pairwise loss (Model-3)."""

    name = "bpr"
    defaults = dataclasses.replace(COMMON, batch_size=1024, learning_rate=0.003, weight_decay=0.05, num_negatives=4)
    model_class = models.BPRModel

    def fixed_query_dims(self, width: int) -> tuple[tuple[int, float], ...]:
        return ((width - 1, 1.0),)  # the constant 1 the item bias is folded in with
