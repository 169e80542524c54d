"""Which optimizer the neural kinds train with, and why large embedding tables get a lazy one.

A neural kind's embedding tables (Keras ``Embedding`` layers: the towers'
id lookups, BPR's vectors and item bias) receive ``tf.IndexedSlices``
gradients: only the rows of the batch's users and movies are non-zero. Keras'
``AdamW`` nevertheless touches every row of every table on every step: it
decays both moment slots of the whole table (``m -= (1 - beta_1) m``), moves
every row by its old momentum and applies the decoupled weight decay to the
whole table (even at a decay of 0). At a million movies x 64 that is three
dense passes over 256 MB each per step, which is most of a step's 75 ms
(XLA does not avoid them: they are dense ops in the graph it compiles).

:class:`LazyAdamW` is ``AdamW`` with one change for the *large* tables
(rows >= ``SPARSE_UPDATE_MIN_ROWS``): a step reads, updates and writes back
only the rows in the batch (their moments, their Adam step, their weight
decay), as TensorFlow Addons' ``LazyAdam`` did. Everything else (the towers'
dense layers, small tables) gets ``AdamW``'s own update, unchanged. Rows that
are not in a batch keep their moments until they next appear (plain Adam
keeps moving them by their decaying momentum for about ten steps). Adam's
bias correction uses the global step, as ``LazyAdam`` does.

Why Adam rather than the Adagrad that TFRS's ``CompositeOptimizer`` pairs
with embeddings: the rest of the model keeps exactly the AdamW it was tuned
with, the tables need one number (a multiple of the run's learning rate)
rather than a new optimizer's settings, and one new-API Keras optimizer is
all a ``tf.distribute`` strategy and ``model.compile`` see (TFRS's
``CompositeOptimizer`` wraps legacy Keras optimizers, which have no AdamW).

The price: after one epoch a lazy run's Recall@10 is lower (on a
5M-rating sample of ML-25M's shape 0.105 at 3x the learning rate against
0.120 for AdamW) and after two 0.135 against 0.141, which is why that
shape stays on AdamW. On the ``movierec-synth`` million-movie set two epochs
reach 0.1195 (0.110 with AdamW) in 74 s of training.

**Deferred updates: AdamW's own result at the lazy path's cost.** A row that
is not in a batch has no gradient, and no training step reads it until it is
next in a batch (the two-tower's towers look up only the batch's ids, and its
in-batch negatives are the batch's own movies). What AdamW does to it
meanwhile is fixed by its moments at its last update: in each skipped step
``j`` its moments shrink by ``beta_1`` and ``beta_2`` and it moves by
``alpha_j * beta_1^j m / (beta_2^(j/2) sqrt(v) + eps)`` (and decays by
``1 - lr * weight_decay``). So a *deferred* table keeps each row's last step,
and before a step's forward pass reads the batch's rows the model asks
:meth:`LazyAdamW.bring_up_to_date` to apply their skipped steps in one go (a
sum over at most ``DEFERRED_TAIL_STEPS`` terms); the step's update then
touches those rows only. Before anything else reads the table (validation at
each epoch's end, the export) :func:`catch_up` brings every row to the
current step. The weights each step reads, and the table at the end, are
then AdamW's, up to float rounding and ``eps`` (which the sum scales by
``beta_2^(j/2)``, a factor between 0.92 and 1). No learning rate to re-tune,
no quality to re-measure: the kinds train as they were tuned, at the cost of
touching the batch's rows. Only a model that can say which rows a step reads
before it runs (``VectorModel.rows_read``) gets it.

**Where the switch happens** (per table, by rows). Small catalogues train
exactly as before: every table of MovieLens 100K (943 users, 1,682 movies)
and 1M is far below ``DEFERRED_UPDATE_MIN_ROWS``, so the kinds tuned and
measured on ua.test see plain AdamW's own code. Tables from that size up to
``SPARSE_UPDATE_MIN_ROWS`` (ML-25M's 162,541 users and 62,423 movies) get
deferred updates; a million-movie table gets the lazy update with its
tuned rate (measured better there than AdamW's: Recall@10 0.1195 against
0.110 after two epochs). Multi-worker runs (``replicas > 1``) keep plain
AdamW: their sparse gradients are gathered across workers without XLA, and
neither path has been measured there (see ``choose``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from movierec_common.tfenv import tensorflow

tf = tensorflow()

# Tables with at least this many rows get lazy (batch-rows-only) updates.
# benchmarks/train_speed.py --part sweep (1,000 users, batch 1,024, a loaded
# 2-core machine; median ms a step, AdamW against lazy): 20k movies 93 vs 65,
# 62k 55 vs 29, 200k 110 vs 45, 1M 536 vs 95; at 2k movies the two were
# within the noise. But at ML-25M's shape (162,541 x 62,423) the gain was
# small (one epoch of a 5M-rating sample 377 s against 296 s) and Recall@10
# after two epochs lower (0.135 against 0.141), so the switch sits above it:
# a million-movie table is lazy, ML-25M's tables and MovieLens 100K's and
# 1M's keep plain AdamW.
SPARSE_UPDATE_MIN_ROWS = 200_000
# Tables with at least this many rows (and fewer than SPARSE_UPDATE_MIN_ROWS)
# get deferred updates, which equal AdamW's. At 20,000 rows a dense AdamW pass
# over the table already cost about a third of a step (sweep above: 93 against
# 65 ms); below it the gain is within the noise and plain AdamW stays.
DEFERRED_UPDATE_MIN_ROWS = 20_000
# Skipped steps a deferred row's catch-up sums: beta_1 ** 160 < 5e-8, below
# float32's relative resolution, so a later step's momentum move is lost in
# the rounding of the first one's.
DEFERRED_TAIL_STEPS = 160
# The lazy tables' learning rate, as a multiple of the run's. Plain Adam keeps
# moving a row by its decaying momentum for the ~1 / (1 - beta_1) = 10 steps
# after it was in a batch; a lazy row moves once per appearance, so at the same
# learning rate it travels about a tenth as far. Chosen on validation Recall@10
# after one epoch on a 5M-rating sample of ML-25M's shape (benchmarks/train_speed.py
# --part epoch --variants lazy@1,lazy@3,lazy@10): 0.091, 0.105, 0.094.
LAZY_LEARNING_RATE_MULTIPLIER = 3.0

_AdamW: Any = tf.keras.optimizers.AdamW  # TensorFlow ships no types


def embedding_layers(model: Any) -> list[Any]:
    """The model's ``Embedding`` layers (at any depth), in a stable order."""
    layers = [layer for layer in model.submodules if isinstance(layer, tf.keras.layers.Embedding)]
    return sorted(layers, key=lambda layer: layer.name)


class LazyAdamW(_AdamW):
    """AdamW whose update of the given embedding layers' tables touches only the rows in the batch.

    ``lazy_layers`` get the lazy update (their own rows' Adam step, at
    ``lazy_learning_rate_multiplier`` times the rate); ``deferred_layers`` get
    AdamW's own result, the skipped steps applied by :meth:`bring_up_to_date`
    before a step reads a row and by :meth:`catch_up` (see the module's
    docstring). Layers rather than
    variables because a Keras layer creates its variables on first call, after
    ``compile``; they are looked up when the optimizer is built (at the first
    step). The deferred sums assume a constant learning rate, as the trainer's.
    """

    def __init__(self, lazy_layers: Sequence[Any], lazy_learning_rate_multiplier: float = 1.0,
                 deferred_layers: Sequence[Any] = (), **kwargs: Any):
        super().__init__(**kwargs)
        if self.amsgrad:
            raise ValueError("LazyAdamW does not implement amsgrad")
        self._lazy_layers = list(lazy_layers)
        self._deferred_layers = list(deferred_layers)
        self.lazy_learning_rate_multiplier = lazy_learning_rate_multiplier
        self._lazy_keys: set[Any] = set()
        self._last_steps: dict[Any, Any] = {}

    def build(self, var_list: Sequence[Any]) -> None:
        self._lazy_keys = {self._var_key(layer.embeddings) for layer in self._lazy_layers}
        super().build(var_list)
        for layer in self._deferred_layers:
            table = layer.embeddings
            # Keras calls build at every apply_gradients (Adam's own slots are made once).
            if self._var_key(table) not in self._last_steps:
                # The step at which each row was last brought up to date (0: never; its moments are 0).
                self._last_steps[self._var_key(table)] = self.add_variable_from_reference(
                    table, "last_step", shape=[table.shape[0]])

    def _is_lazy(self, variable: Any) -> bool:
        return self._var_key(variable) in self._lazy_keys

    def _is_deferred(self, variable: Any) -> bool:
        return self._var_key(variable) in self._last_steps

    def _use_weight_decay(self, variable: Any) -> bool:
        # Lazy and deferred tables' rows decay in update_step, when they are in the batch.
        return not (self._is_lazy(variable) or self._is_deferred(variable)) and super()._use_weight_decay(variable)

    def update_step(self, gradient: Any, variable: Any) -> Any:
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        if self._is_deferred(variable):
            return self._deferred_step(gradient, variable)
        if not self._is_lazy(variable):
            return super().update_step(gradient, variable)
        # apply_gradients has summed duplicate rows, so the indices are unique.
        rows, values = gradient.indices, gradient.values
        dtype = variable.dtype
        lr = tf.cast(self.learning_rate, dtype) * self.lazy_learning_rate_multiplier
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        alpha = self._alpha(tf.cast(self.iterations + 1, dtype), dtype) * self.lazy_learning_rate_multiplier
        index = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[index], self._velocities[index]
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * values
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        change = alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon)
        if self.weight_decay:
            change += lr * tf.cast(self.weight_decay, dtype) * tf.gather(variable, rows)
        return variable.scatter_sub(tf.IndexedSlices(change, rows))

    def _alpha(self, step: Any, dtype: Any) -> Any:
        """Adam's step size with bias correction at (1-based) ``step``."""
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        return tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))

    def _decay_factor(self, variable: Any) -> Any:
        """What AdamW's decoupled weight decay multiplies the table by each step (1 when it does not decay it)."""
        dtype = variable.dtype
        if not (self.weight_decay and _AdamW._use_weight_decay(self, variable)):
            return tf.constant(1.0, dtype)
        return 1 - tf.cast(self.learning_rate, dtype) * tf.cast(self.weight_decay, dtype)

    def _caught_up(self, variable: Any, rows: Any, now: Any) -> tuple[Any, Any, Any]:
        """``rows``' weights and moments after AdamW's steps up to ``now``, in which they had no gradient."""
        dtype = variable.dtype
        index = self._index_dict[self._var_key(variable)]
        m, v = tf.gather(self._momentums[index], rows), tf.gather(self._velocities[index], rows)
        last = tf.gather(self._last_steps[self._var_key(variable)], rows)
        skipped = now - last
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        decay = self._decay_factor(variable)
        j = tf.range(1, DEFERRED_TAIL_STEPS + 1, dtype=dtype)
        # The sum over the skipped steps j of decay^(skipped - j) * alpha(last + j) * beta_1^j / beta_2^(j/2),
        # alpha's bias corrections written with beta^(last + j) = beta^last * beta^j: an outer product, so
        # the [rows, steps] matrix costs multiplications, not powers.
        lr = tf.cast(self.learning_rate, dtype)
        beta_1_powers = tf.pow(beta_1, last)[:, None] * tf.pow(beta_1, j)[None, :]
        beta_2_powers = tf.pow(beta_2, last)[:, None] * tf.pow(beta_2, j)[None, :]
        terms = (lr * tf.sqrt(1 - beta_2_powers) / (1 - beta_1_powers)
                 * tf.pow(beta_1 / (tf.sqrt(beta_2) * decay), j)[None, :]
                 * tf.cast(j[None, :] <= skipped[:, None], dtype))
        shrink = tf.pow(decay, skipped)[:, None]
        moved = shrink * tf.reduce_sum(terms, axis=1)[:, None] * m / (tf.sqrt(v) + self.epsilon)
        weights = shrink * tf.gather(variable, rows) - moved
        skipped = skipped[:, None]
        return weights, tf.pow(beta_1, skipped) * m, tf.pow(beta_2, skipped) * v

    def bring_up_to_date(self, reads: Sequence[tuple[Any, Any]]) -> None:
        """Applies AdamW's skipped steps to the deferred rows a step is about to read.

        ``reads`` is ``[(Embedding layer, ids)]`` (``VectorModel.rows_read``);
        ids may repeat (a repeated row is written twice with the same values).
        Runs inside the compiled train step, before its forward pass.
        """
        if not self._last_steps:  # not built: the first step, where every row is fresh anyway
            return
        for layer, ids in reads:
            table = layer.embeddings
            if not self._is_deferred(table):
                continue
            rows = tf.reshape(tf.cast(ids, tf.int64), [-1])
            now = tf.cast(self.iterations, table.dtype)
            weights, m, v = self._caught_up(table, rows, now)
            self._write_rows(table, rows, weights, m, v, now)

    def _deferred_step(self, gradient: Any, variable: Any) -> Any:
        # apply_gradients has summed duplicate rows, so the indices are unique. The model
        # brought these rows up to date before its forward pass (bring_up_to_date), so
        # their weights and moments are AdamW's as of the previous step.
        rows, values = gradient.indices, gradient.values
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        index = self._index_dict[self._var_key(variable)]
        m, v = tf.gather(self._momentums[index], rows), tf.gather(self._velocities[index], rows)
        weights = tf.gather(variable, rows)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        m = beta_1 * m + (1 - beta_1) * values
        v = beta_2 * v + (1 - beta_2) * tf.square(values)
        weights = self._decay_factor(variable) * weights - self._alpha(step, dtype) * m / (tf.sqrt(v) + self.epsilon)
        self._write_rows(variable, rows, weights, m, v, step)

    def _write_rows(self, variable: Any, rows: Any, weights: Any, m: Any, v: Any, step: Any) -> None:
        index = self._index_dict[self._var_key(variable)]
        self._momentums[index].scatter_update(tf.IndexedSlices(m, rows))
        self._velocities[index].scatter_update(tf.IndexedSlices(v, rows))
        self._last_steps[self._var_key(variable)].scatter_update(
            tf.IndexedSlices(tf.fill(tf.shape(rows), step), rows))
        variable.scatter_update(tf.IndexedSlices(weights, rows))

    def catch_up(self, chunk_rows: int = 16_384) -> None:
        """Brings every row of the deferred tables to the current step, as AdamW would hold it.

        Call it before reading a deferred table (validation, export, saving
        weights); the next steps continue from there. A no-op before the first step.
        """
        for layer in self._deferred_layers:
            table = layer.embeddings
            if self._var_key(table) not in self._last_steps:
                continue
            now = tf.cast(self.iterations, table.dtype)
            for start in range(0, int(table.shape[0]), chunk_rows):
                rows = tf.range(start, min(start + chunk_rows, int(table.shape[0])))
                weights, m, v = self._caught_up(table, rows, now)
                self._write_rows(table, rows, weights, m, v, now)


def catch_up(optimizer: Any) -> None:
    """Brings a deferred table up to date before it is read; nothing for any other optimizer."""
    if isinstance(optimizer, LazyAdamW):
        optimizer.catch_up()


@dataclass(frozen=True)
class OptimizerChoice:
    """The optimizer a run compiles with, and how metadata.json describes it."""

    optimizer: Any
    description: str

    @property
    def lazy(self) -> bool:
        """Whether some table gets lazy or deferred (batch-rows-only) updates: a large catalogue or user base."""
        return isinstance(self.optimizer, LazyAdamW)

    @property
    def deferred(self) -> bool:
        """Whether some table gets deferred updates (see ``build_before_training``)."""
        return isinstance(self.optimizer, LazyAdamW) and bool(self.optimizer._deferred_layers)


def build_before_training(model: Any, choice: OptimizerChoice, dataset: Any) -> None:
    """Creates the model's variables and the optimizer's slots before the train step is traced.

    Keras builds both inside the first trace of the train step, after the
    forward pass; a deferred table's catch-up comes before it, so the first
    trace would hold none. The forward pass here runs on a two-row batch of
    ones shaped like ``dataset``'s (row 1 of every table), not on the
    dataset itself: drawing from it would advance its shuffling.
    """
    if choice.deferred:
        batch = {name: tf.ones([2, *spec.shape[1:]], spec.dtype) for name, spec in dataset.element_spec.items()}
        model.compute_loss(batch, training=False)
        choice.optimizer.build(model.trainable_variables)


def _tables(model: Any, min_rows: int, below: int | None = None) -> list[Any]:
    return [layer for layer in embedding_layers(model)
            if layer.input_dim >= min_rows and (below is None or layer.input_dim < below)]


def choose(model: Any, learning_rate: float, weight_decay: float, replicas: int,
           min_rows: int | None = None, deferred_min_rows: int | None = None) -> OptimizerChoice:
    """AdamW, with lazy updates for the embedding tables of at least ``min_rows`` rows and deferred
    updates for those of ``deferred_min_rows`` up to ``min_rows``, on one worker.

    The thresholds default to ``SPARSE_UPDATE_MIN_ROWS`` and
    ``DEFERRED_UPDATE_MIN_ROWS`` (read at call time, so a benchmark can set the
    module's values to compare the paths).
    """
    threshold = SPARSE_UPDATE_MIN_ROWS if min_rows is None else min_rows
    deferred_threshold = DEFERRED_UPDATE_MIN_ROWS if deferred_min_rows is None else deferred_min_rows
    multiplier = LAZY_LEARNING_RATE_MULTIPLIER
    lazy = _tables(model, threshold) if replicas == 1 else []
    deferred = (_tables(model, deferred_threshold, below=threshold)
                if replicas == 1 and getattr(model, "reads_known", False) else [])
    settings = f"lr={learning_rate:g}, weight_decay={weight_decay:g}"
    if not lazy and not deferred:
        return OptimizerChoice(tf.keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay),
                               f"adamw({settings})")
    parts = []
    if lazy:
        rows = ", ".join(str(layer.input_dim) for layer in lazy)
        parts.append(f"lazy_adamw(embedding tables of {rows} rows; lr={learning_rate * multiplier:g}, "
                     f"weight_decay={weight_decay:g})")
    if deferred:
        rows = ", ".join(str(layer.input_dim) for layer in deferred)
        parts.append(f"deferred_adamw(embedding tables of {rows} rows; {settings})")
    return OptimizerChoice(
        LazyAdamW(lazy, lazy_learning_rate_multiplier=multiplier, deferred_layers=deferred,
                  learning_rate=learning_rate, weight_decay=weight_decay),
        "+".join(parts) + f"+adamw(rest; {settings})")
