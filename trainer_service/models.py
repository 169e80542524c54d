"""The models behind the kinds: the neural kinds' Keras models and the closed forms' weight solvers.

What a kind is (its defaults, settings, fit and refit) lives in ``neural_kinds``
and ``closed_form_kinds``; this module holds the mathematics they train.

Every kind reduces to ``score(u, i) = user_vector[u] @ item_vector[i]`` once
trained, because that is all the serving side understands. The neural kinds
are ``tfrs.Model`` subclasses so the Keras ``fit`` loop (callbacks for
progress, cancellation and early stopping) drives them; EASE^R and its
denoising variant DLAE are closed form (user vector = 0/1 history row, item
vectors = the item-item weights' columns).

Two-tower retrieval uses a full softmax over the whole catalogue for small
catalogues rather than the TFRS tutorial's in-batch softmax: with ~1.7k movies
the full logits matrix is cheap, and uncorrected in-batch negatives
over-penalise popular movies (they are sampled as negatives far more often),
which on MovieLens 100K ranks below the plain popularity baseline. A full
softmax costs batch x catalogue per step, so past ``SAMPLED_SOFTMAX_MIN_ITEMS``
movies the two-tower switches to ``tfrs.tasks.Retrieval``'s in-batch sampled
softmax, with the logQ correction (each logit minus the log of the
candidate's in-batch sampling probability, which undoes the popularity bias)
and removal of accidental hits (a batch's other rows that are the same movie
are not negatives).

On that sampled path the towers' outputs are unit length and the score is
their cosine divided by ``sampled_temperature`` (0.1). With free vector
lengths, a long-tailed million-movie catalogue taught the towers to store
popularity in the movie vectors' length (the 1% most-rated movies twice the
median), which then outvoted the direction that carries the user's taste:
the model recommended the global hits, far below an oracle that knows each
user's clusters. The low temperature also scales the logits' gradients, so
the rarely seen user and movie rows learn faster. Measured against the
alternatives (mixed negatives, a weaker logQ correction, other temperatures)
in ``benchmarks/long_tail.py``; the full softmax keeps the dot product, so
small catalogues' figures do not move.

Every loss is a sum over the batch divided by the global batch
(``tf.nn.compute_average_loss``), not a per-replica mean: under a
multi-worker strategy the replicas' gradients are summed, so per-replica means
would make a step N times too large. On one worker it is the plain mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from movierec_common.tfenv import tensorflow
from trainer_service.hyperparams import Hyperparameters

tf = tensorflow()
import tensorflow_recommenders as tfrs  # noqa: E402 - must follow tensorflow()


def _tower(n_rows: int, hp: Hyperparameters, name: str) -> Any:  # a tf.keras.Sequential
    return tf.keras.Sequential(
        [
            tf.keras.layers.Embedding(n_rows, hp.embedding_dim, name=f"{name}_embedding"),
            tf.keras.layers.Dense(hp.hidden_dim, activation="relu", name=f"{name}_hidden"),
            tf.keras.layers.Dense(hp.embedding_dim, name=f"{name}_output"),
        ],
        name=name,
    )


def _step_seed(model: Any, training: bool) -> Any:
    """A stateless sampling seed keyed on (run seed, step, replica).

    Stateful RNG ops are not reproducible under XLA, and runs must be; each
    replica of a multi-worker step draws its own sample.
    """
    step = tf.cast(model.optimizer.iterations, tf.int32) if training else tf.constant(-1)
    replica = tf.distribute.get_replica_context()
    if training and replica is not None and replica.num_replicas_in_sync > 1:
        step = step * replica.num_replicas_in_sync + tf.cast(replica.replica_id_in_sync_group, tf.int32)
    return tf.stack([tf.constant(model.sampling_seed), step])


class VectorModel(tfrs.Model):
    """A model that can export user and item vectors whose dot product is the score."""

    def __init__(self, n_users: int, n_items: int, hp: Hyperparameters):
        super().__init__()
        self.n_users = n_users
        self.n_items = n_items
        self.hp = hp
        self.sampling_seed = 0  # set by training, for kinds that sample negatives

    def training_examples(self, users: np.ndarray, items: np.ndarray, train_csr) -> dict[str, np.ndarray]:
        """Per-example features; the default is one (user, positive item) pair per rating."""
        del train_csr
        return {"user": users.astype(np.int32), "item": items.astype(np.int32)}

    def export_vectors(self, train_csr) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    @property
    def reads_known(self) -> bool:
        """Whether ``rows_read`` can name, before a step, every embedding row the step looks up."""
        return False

    def rows_read(self, features) -> list[tuple[Any, Any]]:
        """``[(Embedding layer, ids)]``: the rows a training step on ``features`` looks up (when ``reads_known``)."""
        return []

    def train_step(self, inputs):
        # Deferred embedding updates (trainer_service.embedding_optimizer) hold a row's
        # skipped AdamW steps until it is read: apply them before the forward pass reads it.
        bring_up_to_date = getattr(self.optimizer, "bring_up_to_date", None)
        if bring_up_to_date is not None and self.reads_known:
            bring_up_to_date(self.rows_read(inputs))
        return super().train_step(inputs)


# Past this many movies the two-tower trains with in-batch sampled softmax.
# Measured here (3,000 synthetic users x 30 ratings, 3 epochs; ua.base for
# 1.7k): at 1,682 movies the full softmax wins on quality (ua.test Recall@10
# 0.227 against 0.223 sampled, NDCG@10 0.253 against 0.246) for 1.7x the
# time; at 20,000 movies the two score the same (0.086 / 0.088) but the full
# softmax takes 3.4x as long per epoch, and 6.8x at 60,000.
SAMPLED_SOFTMAX_MIN_ITEMS = 20_000
# Rows pushed through a tower at once when exporting vectors, to bound memory.
_EXPORT_BATCH = 65_536


class TwoTowerModel(VectorModel):
    """User-id tower and movie-id tower trained with a softmax over movies:
    the full catalogue when it is small, the batch's movies (sampled softmax)
    when it is large; ``sampled`` says which."""

    def __init__(self, n_users: int, n_items: int, hp: Hyperparameters, sampled: bool | None = None):
        super().__init__(n_users, n_items, hp)
        self.sampled = n_items >= SAMPLED_SOFTMAX_MIN_ITEMS if sampled is None else bool(sampled)
        # The sampled path scores by cosine at hp.sampled_temperature unless the caller chose cosine scores
        # (l2_normalize) with a temperature of their own, or turned it off (0); the full softmax is unchanged.
        default_cosine = self.sampled and not hp.l2_normalize and hp.sampled_temperature > 0
        self.cosine = bool(hp.l2_normalize) or default_cosine
        self.temperature = hp.sampled_temperature if default_cosine else hp.temperature
        self.user_tower = _tower(n_users, hp, "user_tower")
        self.item_tower = _tower(n_items, hp, "item_tower")
        # Dropout on the tower outputs; a rate of 0 makes it the identity.
        self.user_dropout = tf.keras.layers.Dropout(hp.dropout_rate, name="user_dropout")
        self.item_dropout = tf.keras.layers.Dropout(hp.dropout_rate, name="item_dropout")
        self._all_items = tf.range(n_items, dtype=tf.int32)
        # Per-example losses, averaged over the global batch below (Keras
        # refuses SUM_OVER_BATCH_SIZE inside a strategy outside compile()).
        self.task = tfrs.tasks.Retrieval(
            loss=tf.keras.losses.CategoricalCrossentropy(
                from_logits=True, reduction=tf.keras.losses.Reduction.NONE),
            temperature=self.temperature, remove_accidental_hits=True)

    def training_examples(self, users: np.ndarray, items: np.ndarray, train_csr) -> dict[str, np.ndarray]:
        """Adds, for sampled softmax, each positive's in-batch sampling probability.

        A batch's candidates are its rows' movies, so a movie is drawn as a
        negative in proportion to its share of the training examples.
        """
        examples = super().training_examples(users, items, train_csr)
        if self.sampled:
            counts = np.bincount(items, minlength=self.n_items).astype(np.float64)
            share = counts / counts.sum()
            examples["item_probability"] = share[items].astype(np.float32)
            # Every movie's share, for the sampling probability of uniformly drawn negatives.
            self._item_share = tf.constant(share.astype(np.float32))
        return examples

    @property
    def reads_known(self) -> bool:
        # The full softmax reads every movie, uniform negatives are drawn inside the loss.
        return self.sampled and not self.hp.uniform_negatives

    def rows_read(self, features) -> list[tuple[Any, Any]]:
        return [(self.user_tower.layers[0], features["user"]), (self.item_tower.layers[0], features["item"])]

    def _finish(self, vectors):
        # Cosine scores with a temperature stop popular movies winning on vector length alone.
        return tf.math.l2_normalize(vectors, axis=-1) if self.cosine else vectors

    def user_embeddings(self, users, training: bool = False):
        return self._finish(self.user_dropout(self.user_tower(users, training=training), training=training))

    def item_embeddings(self, items, training: bool = False):
        return self._finish(self.item_dropout(self.item_tower(items, training=training), training=training))

    def _uniform_items(self, training: bool):
        """``hp.uniform_negatives`` movie indices drawn uniformly from the whole catalogue."""
        return tf.random.stateless_uniform([self.hp.uniform_negatives], seed=_step_seed(self, training),
                                           minval=0, maxval=self.n_items, dtype=tf.int32)

    def _sampled_loss(self, queries, features, training: bool):
        """Sampled softmax over the batch's movies, plus ``uniform_negatives`` drawn from the whole catalogue.

        In-batch negatives are drawn by popularity, so a movie few users rated
        is almost never pushed away from anyone; uniform negatives (Yang et
        al. 2020, mixed negative sampling) reach the tail. The logQ
        correction then uses each candidate's probability under the mixture,
        B x share + M / movies, raised to ``logq_strength``. Both are off by
        default: on the clustered long tail (``benchmarks/long_tail.py``)
        1,024 uniform negatives learned more slowly per epoch, and each epoch
        cost 1.4x, and a half-strength correction did worse too.
        """
        items = features["item"]
        probability = features["item_probability"]
        if self.hp.uniform_negatives:
            items = tf.concat([items, self._uniform_items(training)], axis=0)
            in_batch = tf.cast(tf.shape(features["item"])[0], tf.float32)
            probability = (in_batch * tf.gather(self._item_share, items)
                           + float(self.hp.uniform_negatives) / float(self.n_items))
        if self.hp.logq_strength != 1.0:
            probability = tf.pow(probability, self.hp.logq_strength)
        candidates = self.item_embeddings(items, training=training)
        losses = self.task(queries, candidates, candidate_sampling_probability=probability,
                           candidate_ids=items, compute_metrics=False, compute_batch_metrics=False)
        return tf.nn.compute_average_loss(losses)

    def compute_loss(self, features, training: bool = False):
        queries = self.user_embeddings(features["user"], training=training)
        if self.sampled:
            return self._sampled_loss(queries, features, training)
        candidates = self.item_embeddings(self._all_items, training=training)
        logits = tf.matmul(queries, candidates, transpose_b=True) / self.temperature
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=features["item"], logits=logits)
        return tf.nn.compute_average_loss(losses)

    @staticmethod
    def _embed_all(embed, count: int) -> np.ndarray:
        return np.concatenate([embed(tf.range(start, min(start + _EXPORT_BATCH, count), dtype=tf.int32)).numpy()
                               for start in range(0, count, _EXPORT_BATCH)])

    def export_vectors(self, train_csr) -> tuple[np.ndarray, np.ndarray]:
        users = self._embed_all(self.user_embeddings, self.n_users)
        items = self._embed_all(self.item_embeddings, self.n_items)
        return users / self.temperature, items


class BPRModel(VectorModel):
    """Matrix factorisation with an item bias, trained with the BPR pairwise loss.

    The bias is folded into the vectors (a constant 1 on the user side) so the
    score stays a pure dot product for serving.
    """

    def __init__(self, n_users: int, n_items: int, hp: Hyperparameters):
        super().__init__(n_users, n_items, hp)
        # One initializer instance per layer: a shared unseeded instance hands
        # every layer the same values.
        self.user_embedding = tf.keras.layers.Embedding(
            n_users, hp.embedding_dim, embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.1))
        self.item_embedding = tf.keras.layers.Embedding(
            n_items, hp.embedding_dim, embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.1))
        self.item_bias = tf.keras.layers.Embedding(n_items, 1, embeddings_initializer="zeros")

    def score(self, users, items):
        """Scores of ``items`` [B, K] for ``users`` [B]."""
        u = self.user_embedding(users)[:, None, :]
        return tf.reduce_sum(u * self.item_embedding(items), axis=-1) + tf.squeeze(self.item_bias(items), -1)

    def compute_loss(self, features, training: bool = False):
        users = features["user"]
        positives = features["item"][:, None]
        negatives = tf.random.stateless_uniform(
            [tf.shape(users)[0], self.hp.num_negatives], seed=_step_seed(self, training),
            minval=0, maxval=self.n_items, dtype=tf.int32,
        )
        margin = self.score(users, positives) - self.score(users, negatives)
        losses = tf.reduce_mean(tf.math.softplus(-margin), axis=-1)  # = -log sigmoid(margin), per example
        return tf.nn.compute_average_loss(losses)

    def export_vectors(self, train_csr) -> tuple[np.ndarray, np.ndarray]:
        users = self.user_embedding.embeddings.numpy()
        items = self.item_embedding.embeddings.numpy()
        bias = self.item_bias.embeddings.numpy()
        ones = np.ones((users.shape[0], 1), dtype=np.float32)
        return np.hstack([users, ones]), np.hstack([items, bias])


def ease_item_weights(history: np.ndarray, l2_lambda: float) -> np.ndarray:
    """EASE^R item-item weights B (zero diagonal), so that scores = history @ B.

    Closed form (Steck 2019); a dense inverse is fine for catalogues of a few
    thousand items, which is what the trainer's bounds allow for this kind.
    """
    gram = history.T.astype(np.float64) @ history.astype(np.float64)
    gram[np.diag_indices_from(gram)] += l2_lambda
    precision = np.linalg.inv(gram)
    weights = -precision / np.diag(precision)
    weights[np.diag_indices_from(weights)] = 0.0
    return weights.astype(np.float32)


def item_gram(history: np.ndarray) -> np.ndarray:
    """G = X^T X in float64, shared by the closed-form kinds' weight solvers."""
    history = history.astype(np.float64)
    return history.T @ history


def dlae_item_weights(gram: np.ndarray, l2_lambda: float, dropout: float) -> np.ndarray:
    """Item-item weights of the denoising linear autoencoder (DLAE; Steck, NeurIPS 2020), from G = X^T X.

    Training EASE's regression under input dropout with rate ``dropout`` is, in
    expectation, a ridge penalty that grows with each item's popularity:
    ``Lambda = dropout / (1 - dropout) * diag(G) + l2_lambda``, and the
    weights are ``B = (G + Lambda)^-1 G = I - (G + Lambda)^-1 Lambda``. The
    diagonal of B only ever scores items the user has already seen, which are
    never recommended, so it is zeroed to keep the vectors' scores clean.
    Scores are ``history @ B`` as for EASE^R.
    """
    penalty = dropout / (1.0 - dropout) * np.diag(gram) + l2_lambda
    regularised = gram.copy()
    regularised[np.diag_indices_from(regularised)] += penalty
    weights = -np.linalg.inv(regularised) * penalty[None, :]
    weights[np.diag_indices_from(weights)] = 0.0
    return weights.astype(np.float32)
