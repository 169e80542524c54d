"""Exact top-k retrieval over a model artifact's exported vectors, in numpy.

Brute force is exact and, at MovieLens scale (1,682 movies), a single
matrix-vector product plus a partial sort: tens of microseconds, far below
what the gRPC layer costs, so an approximate index would buy nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from movierec_common.artifact import ModelArtifact


class Scored(NamedTuple):
    """One ranked movie. A NamedTuple rather than a frozen dataclass because ten
    are built per call on the request path, and a frozen dataclass's __init__
    (one object.__setattr__ per field) costs several times a tuple's."""

    movie_id: int
    title: str
    score: float


@dataclass(frozen=True)
class Recommendation:
    items: list[Scored]
    cold_start: bool


class UnknownMovie(KeyError):
    pass


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest finite scores, best first; ties go to the lower index.

    The common case (k below the number of movies, no tie across the k-th
    place, nothing infinite among the k best) is one argpartition over the
    raw scores plus a sort of k values: about a third of the general path's
    cost, which matters because this runs on every Recommend call. Anything
    else (ties at the boundary, seen movies among the k best because fewer
    than k are left, NaN) takes the general path, so the answer never depends
    on which path ran.
    """
    n = scores.shape[0]
    if 0 < k < n:
        part = np.argpartition(scores, n - k)[n - k:]
        values = scores[part]
        threshold = values.min()
        if np.isfinite(values).all() and np.count_nonzero(scores >= threshold) == k:
            return part[np.lexsort((part, -values))]
    return _top_k_general(scores, k)


def _top_k_general(scores: np.ndarray, k: int) -> np.ndarray:
    candidates = np.flatnonzero(np.isfinite(scores))
    k = min(k, candidates.size)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k < candidates.size:
        values = scores[candidates]
        threshold = values[np.argpartition(-values, k - 1)[k - 1]]
        above = candidates[values > threshold]
        tied = candidates[values == threshold]  # ascending index: the lowest win
        candidates = np.concatenate([above, tied[: k - above.size]])
    return candidates[np.lexsort((candidates, -scores[candidates]))]


# Each user's best PRECOMPUTED_TOP unseen movies are ranked once, when a version
# is loaded (on the watcher thread), for models up to PRECOMPUTE_MAX_SCORES
# user-movie pairs (MovieLens 1M is 22 M: about half a second).
PRECOMPUTED_TOP = 100
PRECOMPUTE_MAX_SCORES = 50_000_000


class Retriever:
    """Answers queries for one loaded model version; immutable once built.

    The common call (a known user, seen movies excluded, k <= PRECOMPUTED_TOP)
    is answered from a per-user ranking computed at load time, so the request
    path runs no numpy arithmetic at all. Why that matters more than the ~30 us
    it saves: numpy releases the GIL around its kernels, and in a server with
    eight worker threads every release is a chance for another thread to take
    the GIL and hold it for up to a switch interval, so a handful of tiny
    kernels per call turn into tail latency and lost throughput under
    concurrency. The ranking is computed row by row with the very same
    scores_for/top_k_indices the uncached path uses, so both paths return
    bit-identical scores and the same tie order; larger k, exclude_seen=false
    and models too big to precompute take the uncached path.
    """

    def __init__(self, artifact: ModelArtifact):
        self.artifact = artifact
        self._user_index = {user_id: i for i, user_id in enumerate(artifact.user_ids.tolist())}
        self._item_index = {int(movie_id): i for i, movie_id in enumerate(artifact.movie_ids.tolist())}
        self._item_vectors = np.ascontiguousarray(artifact.item_vectors, dtype=np.float32)
        self._user_vectors = np.ascontiguousarray(artifact.user_vectors, dtype=np.float32)
        self._movie_ids = artifact.movie_ids.tolist()
        self._titles = artifact.titles.tolist()
        popularity = artifact.popularity.astype(np.float64)
        total = popularity.sum() or 1.0
        self._popular = top_k_indices(popularity, popularity.size)
        self._popular_scores = (popularity / total).astype(np.float32)
        norms = np.linalg.norm(self._item_vectors, axis=1, keepdims=True)
        self._unit_items = self._item_vectors / np.maximum(norms, 1e-12)
        self._ranked_k, self._ranked, self._ranked_scores, self._ranked_counts = self._precompute_rankings()

    def _precompute_rankings(self) -> tuple[int, np.ndarray, np.ndarray, list[int]]:
        """Per-user top PRECOMPUTED_TOP unseen movies (indices, scores, how many exist)."""
        users, items = self._user_vectors.shape[0], self._item_vectors.shape[0]
        if users * items > PRECOMPUTE_MAX_SCORES:
            return 0, np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32), []
        top = min(PRECOMPUTED_TOP, items)
        ranked = np.zeros((users, top), dtype=np.int64)
        ranked_scores = np.zeros((users, top), dtype=np.float32)
        counts = [0] * users
        for user_index in range(users):
            scores = self.scores_for(user_index, exclude_seen=True)
            best = top_k_indices(scores, top)
            counts[user_index] = best.size
            ranked[user_index, : best.size] = best
            ranked_scores[user_index, : best.size] = scores[best]
        return top, ranked, ranked_scores, counts

    @property
    def num_users(self) -> int:
        return len(self._user_index)

    @property
    def num_items(self) -> int:
        return len(self._movie_ids)

    def knows_user(self, user_id: str) -> bool:
        return user_id in self._user_index

    def scores_for(self, user_index: int, exclude_seen: bool) -> np.ndarray:
        scores = self._item_vectors @ self._user_vectors[user_index]
        if exclude_seen:
            scores[self.artifact.seen_items(user_index)] = -np.inf
        return scores

    def recommend(self, user_id: str, k: int, exclude_seen: bool = True) -> Recommendation:
        user_index = self._user_index.get(user_id)
        if user_index is None:
            top = self._popular[:k]
            return Recommendation(self._scored(top, self._popular_scores), cold_start=True)
        if exclude_seen and k <= self._ranked_k:
            n = min(k, self._ranked_counts[user_index])
            movie_ids, titles = self._movie_ids, self._titles
            return Recommendation(
                [Scored(movie_ids[i], titles[i], score)
                 for i, score in zip(self._ranked[user_index, :n].tolist(),
                                     self._ranked_scores[user_index, :n].tolist())],
                cold_start=False)
        scores = self.scores_for(user_index, exclude_seen)
        return Recommendation(self._scored(top_k_indices(scores, k), scores), cold_start=False)

    def similar_items(self, movie_id: int, k: int) -> tuple[Scored, list[Scored]]:
        """Cosine neighbours in the item space: for a two-tower model, movies its
        towers place together; for EASE, movies with similar co-rating weights."""
        index = self._item_index.get(movie_id)
        if index is None:
            raise UnknownMovie(movie_id)
        scores = self._unit_items @ self._unit_items[index]
        scores[index] = -np.inf
        query = Scored(self._movie_ids[index], self._titles[index], 1.0)
        return query, self._scored(top_k_indices(scores, k), scores)

    def _scored(self, indices: np.ndarray, scores: np.ndarray) -> list[Scored]:
        # One gather and one tolist() instead of a numpy scalar per item.
        movie_ids, titles = self._movie_ids, self._titles
        return [Scored(movie_ids[i], titles[i], score)
                for i, score in zip(indices.tolist(), scores[indices].tolist())]
