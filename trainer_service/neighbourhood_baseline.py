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
subsampled to at most :data:`MAX_CO_RATERS` and each voting user's movies to
:data:`MAX_VOTER_MOVIES` (seeded), votes scaled by all / kept, an unbiased
estimate of the counts (noisier, so a slightly weaker bar); and the
baseline is evaluated on a seeded random sample of the evaluated users whose
total work stays within :data:`NEIGHBOURHOOD_MAX_WORK`. The sample is random
(taken in random order, not by cost), so its mean estimates the
population's, and ``users_evaluated`` says how many it was.
"""

from __future__ import annotations

import numpy as np

from trainer_service.evaluation import EVALUATION_MAX_SCORES, evaluate_ranking, restrict_to_users, rows_of
from trainer_service.history_matrix import binary_history

# Up to this many users x movies the baseline is exact, by dense products (64 MB of float32).
DENSE_MAX_ENTRIES = 1 << 24
# Past it: raters kept per movie, movies kept per voting user, and co-occurrence entries expanded in all
# (about 2 s of numpy).
MAX_CO_RATERS = 64
MAX_VOTER_MOVIES = 64
NEIGHBOURHOOD_MAX_WORK = 200_000_000
_SAMPLE_SEED = 1


def subsample_rows(indptr: np.ndarray, values: np.ndarray, cap: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded random ``cap`` of each CSR row's values (all of a shorter row), and each row's scale
    (length / kept), which makes a sum over the kept values an unbiased estimate of the sum over all."""
    counts = np.diff(indptr)
    rows = np.repeat(np.arange(len(counts)), counts)
    shuffled = np.lexsort((rng.random(len(values)), rows))  # rows in order, each row's values shuffled
    rank = np.arange(len(values)) - np.repeat(indptr[:-1], counts)
    kept_counts = np.minimum(counts, cap)
    kept_indptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(kept_counts, out=kept_indptr[1:])
    return kept_indptr, values[shuffled[rank < cap]], counts / np.maximum(kept_counts, 1)


class CoRaters:
    """The training ratings by movie (who rated it) and by user, as the baseline expands them."""

    def __init__(self, train_csr, n_items: int):
        indptr, items = train_csr
        self.n_users = len(indptr) - 1
        self.n_items = n_items
        self.train_csr = (indptr, items)
        self.dense: np.ndarray | None = None
        if self.n_users * n_items <= DENSE_MAX_ENTRIES:
            self.dense = binary_history(train_csr, n_items)
            self.cost: np.ndarray = np.zeros(n_items)
            return
        owners = np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(indptr))
        raters_indptr = np.zeros(n_items + 1, dtype=np.int64)
        np.cumsum(np.bincount(items, minlength=n_items), out=raters_indptr[1:])
        raters = owners[np.argsort(items, kind="stable")]
        rng = np.random.default_rng(_SAMPLE_SEED)
        # A popular movie's raters and a heavy user's movies are subsampled, their votes scaled up.
        self.raters_indptr, self.raters, self.rater_scale = subsample_rows(raters_indptr, raters, MAX_CO_RATERS, rng)
        self.votes_indptr, self.votes, self.vote_scale = subsample_rows(
            np.asarray(indptr, dtype=np.int64), items, MAX_VOTER_MOVIES, rng)
        # cost[j]: the movies j's kept raters vote for.
        kept_votes = np.diff(self.votes_indptr).astype(np.float64)
        self.cost = np.bincount(np.repeat(np.arange(n_items), np.diff(self.raters_indptr)),
                                weights=kept_votes[self.raters], minlength=n_items)

    def user_work(self, users: np.ndarray) -> np.ndarray:
        indptr, items = self.train_csr
        rows, movies = rows_of(indptr, items, users)
        return np.bincount(rows, weights=self.cost[movies], minlength=len(users))

    def scores(self, users: np.ndarray) -> np.ndarray:
        """[len(users), movies] co-occurrence scores (counts; estimates past the dense size)."""
        if self.dense is not None:
            return (self.dense[users] @ self.dense.T) @ self.dense
        indptr, items = self.train_csr
        m = len(users)
        rows, movies = rows_of(indptr, items, users)
        pair, others = rows_of(self.raters_indptr, self.raters, movies)
        # What each (row, other user) pair's votes weigh: the movies they share, scaled for subsampling.
        keys, inverse = np.unique(rows[pair] * self.n_users + others, return_inverse=True)
        shared = np.bincount(inverse, weights=self.rater_scale[movies[pair]])
        voter_row, voter = keys // self.n_users, keys % self.n_users
        shared *= self.vote_scale[voter]
        which, voted = rows_of(self.votes_indptr, self.votes, voter)
        flat = voter_row[which] * self.n_items + voted
        return np.bincount(flat, weights=shared[which], minlength=m * self.n_items).reshape(m, self.n_items)


def sample_within_work(co_raters: CoRaters, evaluated: np.ndarray, max_work: float,
                       max_users: int | None = None) -> np.ndarray:
    """A seeded random subset of ``evaluated`` whose expansion work stays within ``max_work``, of at most
    ``max_users`` users (at least one)."""
    order = np.random.default_rng(_SAMPLE_SEED).permutation(len(evaluated))
    shuffled = evaluated[order]
    running = np.cumsum(co_raters.user_work(shuffled))
    keep = max(1, int(np.searchsorted(running, max_work, side="right")))
    if max_users is not None:
        keep = max(1, min(keep, max_users))
    return np.sort(shuffled[:keep])


def evaluate_neighbourhood_popularity(train_csr, test_csr, n_items: int, ks=(10, 50),
                                      max_work: float = NEIGHBOURHOOD_MAX_WORK,
                                      max_scores: int = EVALUATION_MAX_SCORES) -> dict[str, float]:
    """Recall/NDCG/precision@k of the neighbourhood-popularity baseline, by the one protocol (``evaluation``).

    Besides the expansion work, every user scored costs a row over the whole catalogue, so at most
    ``max_scores`` users x movies are scored, as for the model (2,000 users at a million movies)."""
    co_raters = CoRaters(train_csr, n_items)
    evaluated = np.flatnonzero(np.diff(test_csr[0]) > 0)
    max_users = max(1, int(max_scores // max(n_items, 1)))
    if co_raters.dense is not None and len(evaluated) <= max_users:
        users = evaluated
    else:
        users = sample_within_work(co_raters, evaluated, np.inf if co_raters.dense is not None else max_work,
                                   max_users)
    return evaluate_ranking(co_raters.scores, n_items, train_csr, restrict_to_users(test_csr, users), ks, None)
