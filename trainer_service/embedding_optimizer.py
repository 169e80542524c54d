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

**Where the switch happens** (``SPARSE_UPDATE_MIN_ROWS``, per table). Small
catalogues train exactly as before: every table of MovieLens 100K (943
users, 1,682 movies) and 1M is far below the threshold, so the kinds tuned
and measured on ua.test see plain AdamW; so do ML-25M's tables, where lazy
updates saved little and cost recall. A million-movie table is lazy.
Multi-worker runs (``replicas > 1``) also keep plain AdamW: their sparse
gradients are gathered across workers without XLA, and the lazy path there
has not been measured (see ``choose``).
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

    ``lazy_layers`` are layers rather than variables because a Keras layer
    creates its variables on first call, after ``compile``; they are looked
    up when the optimizer is built (at the first step).
    """

    def __init__(self, lazy_layers: Sequence[Any], lazy_learning_rate_multiplier: float = 1.0, **kwargs: Any):
        super().__init__(**kwargs)
        if self.amsgrad:
            raise ValueError("LazyAdamW does not implement amsgrad")
        self._lazy_layers = list(lazy_layers)
        self.lazy_learning_rate_multiplier = lazy_learning_rate_multiplier
        self._lazy_keys: set[Any] = set()

    def build(self, var_list: Sequence[Any]) -> None:
        self._lazy_keys = {self._var_key(layer.embeddings) for layer in self._lazy_layers}
        super().build(var_list)

    def _is_lazy(self, variable: Any) -> bool:
        return self._var_key(variable) in self._lazy_keys

    def _use_weight_decay(self, variable: Any) -> bool:
        # A lazy table's rows decay in update_step, when they are in the batch.
        return not self._is_lazy(variable) and super()._use_weight_decay(variable)

    def update_step(self, gradient: Any, variable: Any) -> Any:
        if not (isinstance(gradient, tf.IndexedSlices) and self._is_lazy(variable)):
            return super().update_step(gradient, variable)
        # apply_gradients has summed duplicate rows, so the indices are unique.
        rows, values = gradient.indices, gradient.values
        dtype = variable.dtype
        lr = tf.cast(self.learning_rate, dtype) * self.lazy_learning_rate_multiplier
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        alpha = lr * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
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


@dataclass(frozen=True)
class OptimizerChoice:
    """The optimizer a run compiles with, and how metadata.json describes it."""

    optimizer: Any
    description: str

    @property
    def lazy(self) -> bool:
        """Whether some table gets lazy updates, i.e. the run has a large catalogue or user base."""
        return isinstance(self.optimizer, LazyAdamW)


def _lazy_candidates(model: Any, min_rows: int) -> list[Any]:
    return [layer for layer in embedding_layers(model) if layer.input_dim >= min_rows]


def choose(model: Any, learning_rate: float, weight_decay: float, replicas: int,
           min_rows: int | None = None) -> OptimizerChoice:
    """AdamW, with lazy updates for the embedding tables of at least ``min_rows`` rows on one worker.

    ``min_rows`` defaults to ``SPARSE_UPDATE_MIN_ROWS`` (read at call time, so a
    benchmark can set the module's value to compare both paths).
    """
    threshold = SPARSE_UPDATE_MIN_ROWS if min_rows is None else min_rows
    multiplier = LAZY_LEARNING_RATE_MULTIPLIER
    lazy = _lazy_candidates(model, threshold) if replicas == 1 else []
    settings = f"lr={learning_rate:g}, weight_decay={weight_decay:g}"
    if not lazy:
        return OptimizerChoice(tf.keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay),
                               f"adamw({settings})")
    rows = ", ".join(str(layer.input_dim) for layer in lazy)
    return OptimizerChoice(
        LazyAdamW(lazy, lazy_learning_rate_multiplier=multiplier, learning_rate=learning_rate,
                  weight_decay=weight_decay),
        f"lazy_adamw(embedding tables of {rows} rows; lr={learning_rate * multiplier:g}, "
        f"weight_decay={weight_decay:g})+adamw(rest; {settings})")
