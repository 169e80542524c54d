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
