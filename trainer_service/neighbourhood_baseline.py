"""The neighbourhood-popularity baseline: the movies most often rated together with the user's own.

Global popularity is no bar on a large, long-tailed catalogue: on a clustered
million-movie set it finds the held-out movie for 0.05% of users while the
popular movies of each user's own taste find it for about 12%, so a model 5x
better than global popularity can still be useless. This baseline is that
taste-local popularity without knowing any clusters:

    score(u, i) = sum over j in history(u) of co-raters(j, i)

the number of (movie of u, other user) pairs in which the other user also
rated ``i``; equivalently, every user ``v`` votes for their movies with the
number of movies they share with ``u``. It is item-based collaborative
filtering with raw co-occurrence counts, so popular movies still weigh in,
but only those of the user's neighbourhood. On MovieLens 100K (ua) it scores
above global popularity and below the trained kinds (see the README), which
is what a baseline should do.

The cost: a small catalogue (users x movies up to :data:`DENSE_MAX_ENTRIES`,
MovieLens 100K) is scored exactly with two dense products, ``(X_u X^T) X``.
Past that, the work is the co-occurrence expansion, ``sum over j in history(u)
of sum over j's raters v of |history(v)|``, which popular movies make huge
(80,000 raters of one movie at ML-25M's shape). So each movie's raters are
subsampled to at most :data:`MAX_CO_RATERS` (seeded), each sampled rater's
vote scaled by raters / sampled, an unbiased estimate of the counts; and the
baseline is evaluated on a seeded random sample of the evaluated users whose
total work stays within :data:`NEIGHBOURHOOD_MAX_WORK`. The sample is random
(taken in random order, not by cost), so its mean estimates the
population's, and ``users_evaluated`` says how many it was.
"""

from __future__ import annotations

import numpy as np

from trainer_service.evaluation import evaluate_ranking, restrict_to_users, rows_of

# A job's flat baseline metrics hold popularity's figures as they are and this baseline's under this prefix.
NEIGHBOURHOOD_PREFIX = "neighbourhood_"
# Up to this many users x movies the baseline is exact, by dense products (64 MB of float32).
DENSE_MAX_ENTRIES = 1 << 24
# Past it: raters kept per movie, and co-occurrence entries expanded in all (about 2 s of numpy).
MAX_CO_RATERS = 64
NEIGHBOURHOOD_MAX_WORK = 200_000_000
_SAMPLE_SEED = 1


class CoRaters:
    """Who rated each movie (the training ratings by movie), and each movie's expansion cost."""

    def __init__(self, train_csr, n_items: int):
        indptr, items = train_csr
        self.n_users = len(indptr) - 1
        self.n_items = n_items
        self.train_csr = (indptr, items)
        owners = np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(indptr))
        order = np.argsort(items, kind="stable")
        self.raters = owners[order]
        self.raters_indptr = np.zeros(n_items + 1, dtype=np.int64)
        np.cumsum(np.bincount(items, minlength=n_items), out=self.raters_indptr[1:])
        self.dense: np.ndarray | None = None
        if self.n_users * n_items <= DENSE_MAX_ENTRIES:
            self.dense = np.zeros((self.n_users, n_items), dtype=np.float32)
            self.dense[owners, items] = 1.0
        # Subsample popular movies' raters (a seeded random MAX_CO_RATERS of each), votes scaled up.
        counts = np.diff(self.raters_indptr)
        rank = np.arange(len(self.raters)) - np.repeat(self.raters_indptr[:-1], counts)
        shuffled = np.lexsort((np.random.default_rng(_SAMPLE_SEED).random(len(self.raters)),
                               np.repeat(np.arange(n_items), counts)))
        kept = shuffled[rank < MAX_CO_RATERS]
        self.raters = self.raters[kept]
        kept_counts = np.minimum(counts, MAX_CO_RATERS)
        self.raters_indptr = np.zeros(n_items + 1, dtype=np.int64)
        np.cumsum(kept_counts, out=self.raters_indptr[1:])
        self.vote_scale = counts / np.maximum(kept_counts, 1)
        # cost[j] = total history length of j's kept raters
        lengths = np.diff(indptr).astype(np.float64)
        self.cost = np.zeros(n_items) if self.dense is not None else np.bincount(
            np.repeat(np.arange(n_items), kept_counts), weights=lengths[self.raters], minlength=n_items)

    def user_work(self, users: np.ndarray) -> np.ndarray:
        indptr, items = self.train_csr
        rows, movies = rows_of(indptr, items, users)
        return np.bincount(rows, weights=self.cost[movies], minlength=len(users))

    def scores(self, users: np.ndarray) -> np.ndarray:
        """[len(users), movies] co-occurrence scores (float64 counts)."""
        if self.dense is not None:
            return (self.dense[users] @ self.dense.T) @ self.dense
        indptr, items = self.train_csr
        m = len(users)
        rows, movies = rows_of(indptr, items, users)
        pair, others = rows_of(self.raters_indptr, self.raters, movies)
        # What each (row, other user) pair votes: the movies they share, scaled for subsampling.
        keys, inverse = np.unique(rows[pair] * self.n_users + others, return_inverse=True)
        shared = np.bincount(inverse, weights=self.vote_scale[movies[pair]])
        voter_row, voter = keys // self.n_users, keys % self.n_users
        which, voted = rows_of(indptr, items, voter)
        flat = voter_row[which] * self.n_items + voted
        return np.bincount(flat, weights=shared[which], minlength=m * self.n_items).reshape(m, self.n_items)


def sample_within_work(co_raters: CoRaters, evaluated: np.ndarray, max_work: float) -> np.ndarray:
    """A seeded random subset of ``evaluated`` whose expansion work stays within ``max_work`` (at least one user)."""
    order = np.random.default_rng(_SAMPLE_SEED).permutation(len(evaluated))
    shuffled = evaluated[order]
    running = np.cumsum(co_raters.user_work(shuffled))
    keep = max(1, int(np.searchsorted(running, max_work, side="right")))
    return np.sort(shuffled[:keep])


def evaluate_neighbourhood_popularity(train_csr, test_csr, n_items: int, ks=(10, 50),
                                      max_work: float = NEIGHBOURHOOD_MAX_WORK) -> dict[str, float]:
    """Recall/NDCG/precision@k of the neighbourhood-popularity baseline, by the one protocol (``evaluation``)."""
    co_raters = CoRaters(train_csr, n_items)
    evaluated = np.flatnonzero(np.diff(test_csr[0]) > 0)
    users = evaluated if co_raters.dense is not None else sample_within_work(co_raters, evaluated, max_work)
    return evaluate_ranking(co_raters.scores, n_items, train_csr, restrict_to_users(test_csr, users), ks, None)
