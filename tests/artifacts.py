"""Small, real model artifacts for unit tests of publishing and serving."""

from __future__ import annotations

import numpy as np

from movierec_common.artifact import ModelArtifact


def tiny_artifact(users: int = 20, items: int = 30, dim: int = 8, seed: int = 0) -> ModelArtifact:
    rng = np.random.default_rng(seed)
    seen = [np.sort(rng.choice(items, size=rng.integers(1, 6), replace=False)) for _ in range(users)]
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in seen])]).astype(np.int64)
    return ModelArtifact(
        user_ids=np.array([str(u + 1) for u in range(users)], dtype=object),
        user_vectors=rng.normal(size=(users, dim)).astype(np.float32),
        movie_ids=np.arange(101, 101 + items, dtype=np.int64),
        titles=np.array([f"Movie {i} (199{i % 10})" for i in range(items)], dtype=object),
        item_vectors=rng.normal(size=(items, dim)).astype(np.float32),
        seen_indptr=indptr,
        seen_indices=np.concatenate(seen).astype(np.int32),
        popularity=rng.integers(1, 100, size=items).astype(np.float32),
    )


def _cluster_layout(rng: np.random.Generator, items: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cluster centres, cluster weights, each item's cluster): clustered_artifact's first draws."""
    clusters = max(8, items // 1000)
    centres = (rng.normal(size=(clusters, dim)) / np.sqrt(dim)).astype(np.float32)
    weight = 1.0 / np.arange(1, clusters + 1) ** 0.5
    weight /= weight.sum()
    return centres, weight, rng.choice(clusters, size=items, p=weight)


def item_clusters(items: int, dim: int, seed: int) -> np.ndarray:
    """Each item's cluster in ``clustered_artifact(items=items, dim=dim, seed=seed)`` (its first draws, replayed),
    for metadata that follows the clusters (genres remove whole regions of the vector space)."""
    return _cluster_layout(np.random.default_rng(seed), items, dim)[2]


def clustered_artifact(users: int = 2000, items: int = 20_000, dim: int = 64, *, seed: int = 0,
                       mean_seen: int = 40, own_share: float = 0.5) -> ModelArtifact:
    """Embeddings with the structure real ones have, for approximate retrieval.

    I.i.d. Gaussian vectors are the worst case for any index (no structure to
    exploit) and unlike trained embeddings, so items here come from a mixture
    of Gaussians (about 1,000 items a cluster, cluster sizes long-tailed),
    users sit near one cluster's centre, and popularity is long-tailed. Half
    of each user's seen movies are drawn from the user's own best matches
    inside its cluster: real users have rated exactly the movies a model ranks
    first, which is what makes excluding them by over-fetching hard.
    """
    rng = np.random.default_rng(seed)
    centres, weight, item_cluster = _cluster_layout(rng, items, dim)
    clusters = centres.shape[0]
    item_vectors = centres[item_cluster]
    item_vectors += rng.standard_normal(size=(items, dim), dtype=np.float32) * np.float32(0.6 / np.sqrt(dim))
    user_cluster = rng.choice(clusters, size=users, p=weight)
    user_vectors = centres[user_cluster] + rng.standard_normal(size=(users, dim), dtype=np.float32) * np.float32(
        0.5 / np.sqrt(dim))

    popularity_weight = rng.permutation(1.0 / np.arange(1, items + 1) ** 0.9)
    popularity_weight /= popularity_weight.sum()
    counts = np.clip(rng.pareto(1.5, size=users) * mean_seen * 0.5 + 5, 5, min(items // 4, 20 * mean_seen)).astype(int)
    own = (counts * own_share).astype(int)
    # Popular picks for everyone at once (duplicates are merged below).
    popular = rng.choice(items, size=int((counts - own).sum()), p=popularity_weight)
    rows = [np.repeat(np.arange(users), counts - own)]
    cols = [popular]
    members = [np.flatnonzero(item_cluster == c) for c in range(clusters)]
    for c in range(clusters):
        cluster_users = np.flatnonzero(user_cluster == c)
        if cluster_users.size == 0 or members[c].size == 0:
            continue
        scores = user_vectors[cluster_users] @ item_vectors[members[c]].T
        for row, user in enumerate(cluster_users):
            best = members[c][np.argsort(-scores[row])[: 2 * own[user]]]
            picked = rng.choice(best, size=min(own[user], best.size), replace=False)
            rows.append(np.full(picked.size, user))
            cols.append(picked)
    keys = np.unique(np.concatenate(rows).astype(np.int64) * items + np.concatenate(cols))
    seen_users, seen_items = keys // items, (keys % items).astype(np.int32)
    indptr = np.zeros(users + 1, dtype=np.int64)
    np.cumsum(np.bincount(seen_users, minlength=users), out=indptr[1:])
    return ModelArtifact(
        user_ids=np.array([str(u + 1) for u in range(users)], dtype=object),
        user_vectors=user_vectors.astype(np.float32),
        movie_ids=np.arange(1, items + 1, dtype=np.int64) * 7,  # not positions: serving must map ids
        titles=np.array([f"Movie {i + 1} ({1930 + i % 90})" for i in range(items)], dtype=object),
        item_vectors=np.ascontiguousarray(item_vectors, dtype=np.float32),
        seen_indptr=indptr,
        seen_indices=seen_items,
        popularity=(popularity_weight * 1e6).astype(np.float32),
    )
