"""Top-k ranking metrics over the full catalogue, and the popularity baseline.

Every model is evaluated through the same function on its user and item
vectors, so a metric difference between kinds is a model difference, never a
protocol difference. The protocol: every held-out rating is relevant whatever
its value, the user's training items are excluded, all other items are ranked,
and metrics are averaged over users with at least one held-out item.

At catalogue scale (a million movies, 160k users) scoring every user against
every movie is 10^10-10^11 scores, so the work is bounded twice: scores are
computed a few rows at a time (never a users x movies matrix), and a caller
may cap the total number of scores, in which case a fixed, seeded sample of
the evaluated users stands for all of them and ``users_evaluated`` says how
many it was.
"""

from __future__ import annotations

import numpy as np

# Rows of scores held at once: at most this many floats (128 MB) per chunk.
# Public with FULL_SORT_MAX_ITEMS so a test can take both paths on small data.
CHUNK_SCORES = 1 << 25
_MAX_CHUNK_USERS = 512
# Up to this many movies a full stable sort is cheap and its order is the
# reference (best first, lower index first on ties). Beyond it the top k is
# selected from the movies at or above a threshold (see _top_items), in the
# same order, ties at the k-th place included.
FULL_SORT_MAX_ITEMS = 50_000
# _top_items' threshold is taken from every stride-th score, the stride chosen
# to sample about this many scores per place asked for. The candidates then
# number about k x stride: for k = 50 at a million movies a 16,129-score
# sample and about 3,100 candidates a row.
TOP_K_SAMPLE_PER_PLACE = 320
_SAMPLE_SEED = 0
# The score budget of a job's held-out evaluation: every user up to ML-25M's
# 10^10 pairs would take minutes, so 2 x 10^9 scores (all of MovieLens 100K
# and 1M, 32k users of ML-25M, 2,000 users of a million-movie catalogue) is
# what a job reports on; ``users_evaluated`` says how many.
EVALUATION_MAX_SCORES = 2_000_000_000


def _sample_users(evaluated: np.ndarray, n_items: int, max_scores: int | None) -> np.ndarray:
    if max_scores is None or len(evaluated) * n_items <= max_scores:
        return evaluated
    keep = max(1, int(max_scores // max(n_items, 1)))
    chosen = np.random.default_rng(_SAMPLE_SEED).choice(len(evaluated), size=keep, replace=False)
    return evaluated[np.sort(chosen)]


def _top_items(scores: np.ndarray, k: int) -> np.ndarray:
    """The k best columns per row, best first, lower index first on ties (a stable sort's order).

    Past :data:`FULL_SORT_MAX_ITEMS` columns, without sorting whole rows: ``t``,
    the k-th largest of every stride-th score of a row, is at most the row's
    own k-th largest (a subset's k-th largest is never above the set's), so the
    scores above ``t`` and, where those are fewer than k, the first of those
    equal to ``t`` hold the row's top k with its ties resolved as the rule says.
    Only these candidates are sorted. Measured at a million movies, k = 50, 33
    rows as evaluation scores them at a time (medians of 3, two runs): 0.4-0.9
    ms a row, against 1.6-4.6 ms for numpy's argpartition, which also let an
    arbitrary one of several movies tied at the k-th place in, and about 3.8 ms
    for TensorFlow's top_k, on normal scores, Zipf counts and mostly-zero rows.
    """
    n_rows, n_cols = scores.shape
    if n_cols <= FULL_SORT_MAX_ITEMS or k >= n_cols:
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]
    stride = max(1, n_cols // (TOP_K_SAMPLE_PER_PLACE * k))
    sample = scores[:, ::stride]
    place = sample.shape[1] - k
    threshold = np.partition(sample, place, axis=1)[:, place]
    flat = np.flatnonzero(scores > threshold[:, None])  # row-major: by row, then by column
    rows, cols = np.divmod(flat, n_cols)
    above = np.bincount(rows, minlength=n_rows)
    short = np.flatnonzero(above < k)
    if short.size:  # ties at the threshold: their first (k - above) by index complete the row
        ties = [np.flatnonzero(scores[row] == threshold[row])[:k - above[row]] for row in short]
        rows = np.concatenate([rows, np.repeat(short, [len(t) for t in ties])])
        cols = np.concatenate([cols, *ties])
    # Within a row the candidates come in column order (those added for ties score below the others), so
    # a stable sort by score, then a stable sort of that by row, keeps a tie's column order (any float
    # dtype; -0.0 and 0.0 compare equal, as in the full sort).
    by_score = np.argsort(-scores[rows, cols], kind="stable")
    cols = cols[by_score[np.argsort(rows[by_score], kind="stable")]]
    # Every row has at least k candidates: its sample alone holds k scores at or above the threshold.
    per_row = np.bincount(rows, minlength=n_rows)
    starts = np.cumsum(per_row) - per_row
    return cols[starts[:, None] + np.arange(k)].astype(np.int64, copy=False)


def rows_of(indptr: np.ndarray, items: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row in ``users``, item) pairs of a CSR's rows, concatenated."""
    counts = indptr[users + 1] - indptr[users]
    rows = np.repeat(np.arange(len(users)), counts)
    starts = np.repeat(indptr[users], counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return rows, items[starts + offsets]


def evaluate_scores(user_vectors, item_vectors, train_csr, test_csr, ks=(10, 50),
                    max_scores: int | None = None) -> dict[str, float]:
    """Recall@k, NDCG@k (binary gains) and precision@k averaged over users with test items.

    ``max_scores`` caps users x movies scored; past it a seeded sample of users
    is evaluated. Ties in score are broken towards the lower item index so
    results do not depend on sort internals.
    """
    user_vectors = np.asarray(user_vectors, dtype=np.float32)
    item_vectors_t = np.ascontiguousarray(np.asarray(item_vectors, dtype=np.float32).T)
    return evaluate_ranking(lambda users: user_vectors[users] @ item_vectors_t, item_vectors_t.shape[1],
                            train_csr, test_csr, ks, max_scores)


def evaluate_score_rows(scores: np.ndarray, users: np.ndarray, train_csr, test_csr,
                        ks=(10, 50)) -> dict[str, float]:
    """As :func:`evaluate_scores` for precomputed scores: row r holds user ``users[r]``'s scores.

    Users outside ``users`` are not evaluated (their test items are ignored).
    """
    users = np.asarray(users, dtype=np.int64)
    row_of = np.full(len(test_csr[0]) - 1, -1, dtype=np.int64)
    row_of[users] = np.arange(users.size)
    return evaluate_ranking(lambda chunk: scores[row_of[chunk]], scores.shape[1], train_csr,
                            restrict_to_users(test_csr, users), ks, None)


def restrict_to_users(test_csr, users: np.ndarray):
    """``test_csr`` with every row outside ``users`` emptied, so only ``users`` are evaluated."""
    test_indptr, test_items = test_csr
    keep = np.zeros(len(test_indptr) - 1, dtype=bool)
    keep[np.asarray(users, dtype=np.int64)] = True
    counts = np.where(keep, np.diff(test_indptr), 0)
    indptr = np.zeros_like(test_indptr)
    np.cumsum(counts, out=indptr[1:])
    owner = np.repeat(np.arange(len(test_indptr) - 1), np.diff(test_indptr))
    return indptr, test_items[keep[owner]]


def evaluate_ranking(score_rows, n_items: int, train_csr, test_csr, ks=(10, 50),
                     max_scores: int | None = None) -> dict[str, float]:
    """The metrics of any scorer: ``score_rows(users)`` returns those users' [len, movies] scores (a new array)."""
    train_indptr, train_items = train_csr
    test_indptr, test_items = test_csr
    ks = tuple(sorted(set(int(k) for k in ks)))
    max_k = min(max(ks), n_items)
    discounts = 1.0 / np.log2(np.arange(2, max_k + 2))
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])

    test_counts = np.diff(test_indptr)
    evaluated = _sample_users(np.flatnonzero(test_counts > 0), n_items, max_scores)
    chunk = int(max(1, min(_MAX_CHUNK_USERS, CHUNK_SCORES // max(n_items, 1))))
    sums = {f"{name}_at_{k}": 0.0 for k in ks for name in ("recall", "ndcg", "precision")}
    for start in range(0, len(evaluated), chunk):
        users = evaluated[start:start + chunk]
        scores = score_rows(users)
        seen_rows, seen_cols = rows_of(train_indptr, train_items, users)
        scores[seen_rows, seen_cols] = -np.inf
        top = _top_items(scores, max_k)
        # A top-k movie is a hit when (row, movie) is among the test pairs.
        test_rows, test_cols = rows_of(test_indptr, test_items, users)
        test_keys = test_rows.astype(np.int64) * n_items + test_cols
        top_keys = np.arange(len(users), dtype=np.int64)[:, None] * n_items + top
        hits = np.isin(top_keys, test_keys).astype(np.float64)
        counts = test_counts[users]
        cumulative_hits = np.cumsum(hits, axis=1)
        cumulative_dcg = np.cumsum(hits * discounts, axis=1)
        for k in ks:
            kk = min(k, max_k)
            hit_k = cumulative_hits[:, kk - 1]
            sums[f"recall_at_{k}"] += float(np.sum(hit_k / counts))
            sums[f"precision_at_{k}"] += float(np.sum(hit_k / k))
            sums[f"ndcg_at_{k}"] += float(np.sum(cumulative_dcg[:, kk - 1] / ideal[np.minimum(counts, kk)]))
    n = max(len(evaluated), 1)
    metrics = {key: value / n for key, value in sums.items()}
    metrics["users_evaluated"] = float(len(evaluated))
    return metrics


def popularity_vectors(train_csr, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Score every item by its training count, as a rank-1 dot product.

    Expressed as vectors so the baseline is evaluated (and served) exactly like a model.
    """
    indptr, items = train_csr
    counts = np.bincount(items, minlength=n_items).astype(np.float32)
    return np.ones((len(indptr) - 1, 1), dtype=np.float32), counts[:, None]
