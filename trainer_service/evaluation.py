"""Top-k ranking metrics over the full catalogue, and the popularity baseline.

Every model is evaluated through the same function on its user and item
vectors, so a metric difference between kinds is a model difference, never a
protocol difference. The protocol: every held-out rating is relevant whatever
its value, the user's training items are excluded, all other items are ranked,
and metrics are averaged over users with at least one held-out item.
"""

from __future__ import annotations

import numpy as np

_CHUNK_USERS = 512


def evaluate_scores(user_vectors, item_vectors, train_csr, test_csr, ks=(10, 50)) -> dict[str, float]:
    """Recall@k, NDCG@k (binary gains) and precision@k averaged over users with test items.

    Ties in score are broken towards the lower item index so results do not
    depend on sort internals.
    """
    user_vectors = np.asarray(user_vectors, dtype=np.float32)
    item_vectors = np.asarray(item_vectors, dtype=np.float32)
    train_indptr, train_items = train_csr
    test_indptr, test_items = test_csr
    n_items = item_vectors.shape[0]
    ks = tuple(sorted(set(int(k) for k in ks)))
    max_k = min(max(ks), n_items)
    discounts = 1.0 / np.log2(np.arange(2, max_k + 2))
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])

    test_counts = np.diff(test_indptr)
    evaluated = np.flatnonzero(test_counts > 0)
    sums = {f"{name}_at_{k}": 0.0 for k in ks for name in ("recall", "ndcg", "precision")}
    for start in range(0, len(evaluated), _CHUNK_USERS):
        users = evaluated[start:start + _CHUNK_USERS]
        scores = user_vectors[users] @ item_vectors.T
        rows = np.arange(len(users))
        seen_counts = train_indptr[users + 1] - train_indptr[users]
        seen_rows = np.repeat(rows, seen_counts)
        seen_cols = np.concatenate([train_items[train_indptr[u]:train_indptr[u + 1]] for u in users])
        scores[seen_rows, seen_cols] = -np.inf
        # argsort of the negated scores with a stable sort keeps lower index first on ties.
        top = np.argsort(-scores, axis=1, kind="stable")[:, :max_k]
        relevant = np.zeros((len(users), n_items), dtype=bool)
        counts = test_counts[users]
        relevant[np.repeat(rows, counts),
                 np.concatenate([test_items[test_indptr[u]:test_indptr[u + 1]] for u in users])] = True
        hits = relevant[rows[:, None], top].astype(np.float64)
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
