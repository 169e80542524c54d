"""Top-k retrieval for one loaded model version: the :class:`Retriever` composes
a :class:`~recommender_service.top_k.TopK` backend (which finds the best
movies for a query vector) with what the version knows around it: user and
movie ids, titles, seen lists and cold start
(:class:`~recommender_service.catalogue.ServingCatalogue`), rankings
precomputed per user (:class:`~recommender_service.rankings.Rankings`), and
sessions (queries built from the movies a caller just saw, see
``recommender_service.sessions``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from movierec_common.artifact import ModelArtifact
from movierec_common.session_query import QueryEncoder
from recommender_service.catalogue import ServingCatalogue
from recommender_service.errors import SessionsUnsupported, UnknownMovie
from recommender_service.rankings import RANKING_BUDGET_BYTES, Rankings
from recommender_service.sessions import SessionQueries, first_occurrences
from recommender_service.top_k import NO_ITEMS, BruteForce, TopK


class Scored(NamedTuple):
    """One ranked movie. A NamedTuple rather than a frozen dataclass because ten
    are built per call on the request path, and a frozen dataclass's __init__
    (one object.__setattr__ per field) costs several times a tuple's."""

    movie_id: int
    title: str
    score: float
    genres: tuple[str, ...] = ()  # in the version's genre order; () also for versions without metadata
    year: int = 0                 # 0 = unknown


@dataclass(frozen=True)
class Recommendation:
    items: list[Scored]
    cold_start: bool
    unknown_movie_ids: list[int] = field(default_factory=list)  # recent movies the version does not know


class Retriever:
    """Answers queries for one model version; immutable once built.

    The common call (a ranked user, seen movies excluded, k <= the ranking
    depth) is answered from the precomputed rankings, so the request path runs
    no numpy arithmetic at all. Why that matters more than the microseconds it
    saves: numpy releases the GIL around its kernels, and in a server with
    eight worker threads every release is a chance for another thread to take
    the GIL and hold it for up to a switch interval, so a handful of tiny
    kernels per call turn into tail latency under concurrency. Larger k,
    exclude_seen=false and users beyond the ranking budget ask the backend
    live; both paths score with the same code, so they agree.

    Sessions (:meth:`recommend_session`) are always live: the query depends
    on the movies sent, so there is nothing to precompute. A version
    without a ``query_encoder`` answers everything else but refuses them.
    """

    def __init__(self, source: ModelArtifact | ServingCatalogue, top_k: TopK | None = None, *,
                 rankings: Rankings | None = None, ranking_budget_bytes: int = RANKING_BUDGET_BYTES,
                 query_encoder: QueryEncoder | None = None):
        if isinstance(source, ModelArtifact):
            top_k = top_k or BruteForce(source.item_vectors)
            source = ServingCatalogue.from_artifact(source)
        if top_k is None:
            raise TypeError("a ServingCatalogue needs its TopK backend")
        self.catalogue = source
        self.top_k = top_k
        self.sessions = None if query_encoder is None else SessionQueries(
            query_encoder, source.user_vectors, source.history_indptr, source.history_indices, top_k.item_rows)
        self._user_index = {user_id: i for i, user_id in enumerate(source.user_ids.tolist())}
        self._user_vectors = source.user_vectors
        self._movie_ids = source.movie_ids
        self._titles = source.titles
        self._movies = source.movies
        self._sorted_movie_ids = source.movie_ids[source.movie_order]
        self.rankings = rankings if rankings is not None else Rankings.compute(source, top_k, ranking_budget_bytes)

    @property
    def num_users(self) -> int:
        return len(self._user_index)

    @property
    def num_items(self) -> int:
        return int(self._movie_ids.shape[0])

    def knows_user(self, user_id: str) -> bool:
        return user_id in self._user_index

    def recommend(self, user_id: str, k: int, exclude_seen: bool = True) -> Recommendation:
        user_index = self._user_index.get(user_id)
        if user_index is None:
            popular = self.catalogue.popular[:k]
            return Recommendation(self._scored(popular, self.catalogue.popular_share[:k]), cold_start=True)
        rankings = self.rankings
        if exclude_seen and k <= rankings.top:
            row = rankings.rows[user_index]
            if row >= 0:
                n = min(k, rankings.counts[row])
                return Recommendation(self._scored(rankings.indices[row, :n], rankings.scores[row, :n]),
                                      cold_start=False)
        return self.recommend_live(user_index, k, exclude_seen)

    def answers_live(self, user_id: str, k: int, exclude_seen: bool = True) -> bool:
        """Whether :meth:`recommend` answers this call with a scan of the catalogue (a known user whose
        answer the rankings do not hold), the work a batch's cost limit counts."""
        user_index = self._user_index.get(user_id)
        if user_index is None:
            return False
        rankings = self.rankings
        return not (exclude_seen and k <= rankings.top and rankings.rows[user_index] >= 0)

    def recommend_live(self, user_index: int, k: int, exclude_seen: bool = True) -> Recommendation:
        """Asks the backend, skipping the rankings (the smoke test checks both paths)."""
        exclude = self.catalogue.seen_items(user_index) if exclude_seen else NO_ITEMS
        indices, scores = self.top_k.top_k(self._user_vectors[user_index], k, exclude)
        return Recommendation(self._scored(indices, scores), cold_start=False)

    def recommend_session(self, user_id: str, k: int, recent_movie_ids: Sequence[int] | np.ndarray,
                          exclude_seen: bool = True) -> Recommendation:
        """Top k for a caller who just saw ``recent_movie_ids`` (oldest first).

        A known user's recent movies are the newest part of their history; an
        unknown user's are the whole of it, and the answer is personal as soon
        as one of them is known. With exclude_seen, the answer leaves out the
        user's seen movies and the recent ones. Movies this version does not
        know are reported back and otherwise ignored; with none known, the
        answer is what it would have been without a session. Raises
        SessionsUnsupported for a version without a query encoder.
        """
        if self.sessions is None:
            raise SessionsUnsupported()
        ids = np.asarray(recent_movie_ids, dtype=np.int64).reshape(-1)
        indices = self.movie_indices(ids)
        known = indices >= 0
        unknown = first_occurrences(ids[~known]) if not known.all() else []
        recent = indices[known]
        if recent.size == 0:
            answer = self.recommend(user_id, k, exclude_seen)
            return Recommendation(answer.items, answer.cold_start, unknown)
        user_index = self._user_index.get(user_id)
        if user_index is None:
            query = self.sessions.for_visitor(recent)
            exclude = np.unique(recent) if exclude_seen else NO_ITEMS
        else:
            query = self.sessions.for_user(user_index, recent)
            exclude = np.union1d(self.catalogue.seen_items(user_index), recent) if exclude_seen else NO_ITEMS
        indices, scores = self.top_k.top_k(query, k, exclude)
        return Recommendation(self._scored(indices, scores), cold_start=False, unknown_movie_ids=unknown)

    def movie_indices(self, movie_ids: np.ndarray) -> np.ndarray:
        """Item index of every id (-1 where this version does not know it), by one vectorised binary search."""
        ids = np.asarray(movie_ids, dtype=np.int64)
        sorted_ids = self._sorted_movie_ids
        position = np.minimum(np.searchsorted(sorted_ids, ids), sorted_ids.shape[0] - 1)
        return np.where(sorted_ids[position] == ids, self.catalogue.movie_order[position], -1).astype(np.int64)

    def movie_index(self, movie_id: int) -> int:
        index = int(self.movie_indices(np.array([movie_id], dtype=np.int64))[0])
        if index < 0:
            raise UnknownMovie(movie_id)  # the served model names its version (recommender_service.model)
        return index

    def similar_items(self, movie_id: int, k: int) -> tuple[Scored, list[Scored]]:
        """Cosine neighbours in the item space: for a two-tower model, movies its
        towers place together; for EASE, movies with similar co-rating weights."""
        index = self.movie_index(movie_id)
        query = self._scored(np.array([index]), np.ones(1, dtype=np.float32))[0]
        indices, scores = self.top_k.similar(index, k)
        return query, self._scored(indices, scores)

    def _scored(self, indices: np.ndarray, scores: np.ndarray) -> list[Scored]:
        # One gather and one tolist() per field instead of a numpy scalar per item.
        movies = self._movies
        return [Scored(movie_id, title, score, genres, year) for movie_id, title, score, genres, year in
                zip(self._movie_ids[indices].tolist(), self._titles.take(indices), scores.tolist(),
                    movies.genres_of_many(indices), movies.years[indices].tolist(), strict=True)]
