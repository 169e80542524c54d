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
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from movierec_common.artifact import ModelArtifact
from movierec_common.session_query import QueryEncoder
from recommender_service.catalogue import ServingCatalogue
from recommender_service.errors import SessionsUnsupported, UnknownMovie
from recommender_service.movie_filter import (
    NOTHING_RESOLVED,
    MovieFilter,
    ResolvedFilter,
    SubsetCache,
    resolve,
    sorted_union,
)
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
    unknown_movie_ids: list[int] = field(default_factory=list)  # recent or filter movies the version does not know
    eligible_movies: int = 0  # movies that passed the filter, exclude_seen and the hidden movies


def _merged(first: list[int], then: list[int]) -> list[int]:
    """Unknown ids as a response reports them: ``first``'s, then ``then``'s not among them, each once (a
    dict, not a list scan: an id list may hold 100,000 unknown ids)."""
    return list(dict.fromkeys([*first, *then])) if then else first


def _not_in(indices: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """bool per entry of ``indices``: not in ``excluded`` (ascending, distinct): one binary search each,
    so checking a ranking row of 100 against 10,000 exclusions costs microseconds, not a sort."""
    if not excluded.size:
        return np.ones(indices.shape[0], dtype=bool)
    position = np.minimum(np.searchsorted(excluded, indices), excluded.size - 1)
    return excluded[position] != indices


# Movie ids up to this many times the catalogue's size get a dense id -> index table (int32, 4 bytes an id:
# at most 32 MB at a million movies, ids up to 8 M; MovieLens 25M's ids reach 3.4x its movies, the
# synthetic catalogues' 7x). Why: a filter's id lists are looked up on the request path, and a binary
# search of 10,000 random ids in a million sorted ones measured 1.8 ms (a cache miss per step; 0.57 ms with
# the ids sorted first), the table's gather ~0.05 ms. Sparser id spaces (ids hashed into int64) keep the
# search.
DENSE_ID_TABLE_FACTOR = 8


def _dense_id_table(movie_ids: np.ndarray) -> np.ndarray | None:
    if not movie_ids.size or movie_ids.min() < 0:
        return None
    largest = int(movie_ids.max())
    if largest >= DENSE_ID_TABLE_FACTOR * movie_ids.size + 1024:
        return None
    table = np.full(largest + 1, -1, dtype=np.int32)
    table[movie_ids] = np.arange(movie_ids.size, dtype=np.int32)
    return table


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

    A **restriction** (a request filter resolved for this version, with the
    operators' hidden movies among its exclusions: ``movie_filter.
    ResolvedFilter``) narrows every path: the rankings answer a restricted
    call only when the user's ranking still holds the right answer (at least
    k of its movies pass, or it holds every unseen movie), the popularity
    list of a cold start is walked until k pass, and everything else asks the
    backend with the restriction inside retrieval.

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
        self._index_by_id = _dense_id_table(source.movie_ids)
        self.rankings = rankings if rankings is not None else Rankings.compute(source, top_k, ranking_budget_bytes)
        self.subsets = SubsetCache()

    @property
    def num_users(self) -> int:
        return len(self._user_index)

    @property
    def num_items(self) -> int:
        return int(self._movie_ids.shape[0])

    def knows_user(self, user_id: str) -> bool:
        return user_id in self._user_index

    def resolve(self, movie_filter: MovieFilter, hidden: np.ndarray = NO_ITEMS) -> ResolvedFilter:
        """``movie_filter`` as this version reads it, with ``hidden`` (ascending distinct movie indices,
        the operators' hidden movies) among its exclusions. Raises FilterNeedsMetadata, InvalidRequest."""
        resolved = resolve(movie_filter, self._movies, self.movie_indices, self.subsets)
        if not hidden.size:
            return resolved
        exclude = sorted_union(resolved.exclude, hidden)
        return ResolvedFilter(resolved.subset, exclude, resolved.unknown_movie_ids)

    def _eligible(self, restriction: ResolvedFilter, excluded: np.ndarray) -> int:
        """Movies passing ``restriction``'s subset and in neither ``excluded`` (ascending, distinct) nor its
        exclusions. Counted with binary searches rather than a union (which sorts both): this runs on
        every filtered call."""
        extra = restriction.exclude
        if extra.size and excluded.size:
            extra = extra[_not_in(extra, excluded)]
        subset = restriction.subset
        if subset is None:
            return self.num_items - int(excluded.size) - int(extra.size)
        return subset.size - subset.count_among(excluded) - subset.count_among(extra)

    def recommend(self, user_id: str, k: int, exclude_seen: bool = True,
                  restriction: ResolvedFilter = NOTHING_RESOLVED) -> Recommendation:
        user_index = self._user_index.get(user_id)
        if user_index is None:
            return self._cold_start(k, restriction)
        rankings = self.rankings
        if exclude_seen and k <= rankings.top:
            row = rankings.rows[user_index]
            if row >= 0:
                answer = self._from_ranking(row, user_index, k, restriction)
                if answer is not None:
                    return answer
        return self.recommend_live(user_index, k, exclude_seen, restriction)

    def _from_ranking(self, row: int, user_index: int, k: int, restriction: ResolvedFilter) -> Recommendation | None:
        """The answer from the user's precomputed ranking, or None when it cannot be known from it.

        The ranking holds the user's best unseen movies in answer order, so the first k of them that
        pass a restriction are the restricted answer, provided k pass, or the ranking is shorter than
        its depth (then it holds every unseen movie, and whatever passes is all there is).
        """
        rankings = self.rankings
        count = int(rankings.counts[row])
        if restriction.is_empty:
            n = min(k, count)
            return Recommendation(self._scored(rankings.indices[row, :n], rankings.scores[row, :n]), cold_start=False,
                                  eligible_movies=self.num_items - self.catalogue.seen_count(user_index))
        indices = rankings.indices[row, :count]
        keep = _not_in(indices, restriction.exclude)
        if restriction.subset is not None:
            keep &= restriction.subset.contains(indices)
        passing = np.flatnonzero(keep)
        if passing.size < k and count == rankings.top:
            return None
        best = passing[:k]
        eligible = self._eligible(restriction, self.catalogue.seen_items(user_index))
        return Recommendation(self._scored(indices[best], rankings.scores[row, best]), cold_start=False,
                              unknown_movie_ids=restriction.unknown_movie_ids, eligible_movies=eligible)

    def _cold_start(self, k: int, restriction: ResolvedFilter) -> Recommendation:
        """The most popular movies that pass, walking the popularity list in growing slices until k pass."""
        catalogue = self.catalogue
        if restriction.is_empty:
            popular = catalogue.popular[:k]
            return Recommendation(self._scored(popular, catalogue.popular_share[:k]), cold_start=True,
                                  eligible_movies=self.num_items)
        subset = restriction.subset
        eligible = self._eligible(restriction, NO_ITEMS)
        want = min(k, eligible)
        scan = max(4 * k, 1024)
        while True:
            head = catalogue.popular[:scan]
            keep = _not_in(head, restriction.exclude)
            if subset is not None:
                keep &= subset.contains(head)
            chosen = np.flatnonzero(keep)
            if chosen.size >= want or scan >= self.num_items:
                chosen = chosen[:want]
                return Recommendation(self._scored(head[chosen], catalogue.popular_share[chosen]), cold_start=True,
                                      unknown_movie_ids=restriction.unknown_movie_ids, eligible_movies=eligible)
            scan *= 4

    def answers_live(self, user_id: str, k: int, exclude_seen: bool = True,
                     restriction: ResolvedFilter = NOTHING_RESOLVED) -> bool:
        """Whether :meth:`recommend` may answer this call with a search of the catalogue (a known user whose
        answer the rankings may not hold), the work a batch's cost limit counts. A ranked user under
        exclusions only (a filter's excluded ids, the hidden movies) counts as answered by the ranking,
        which it is unless they take more than depth - k of its movies; under a subset (genres, years,
        only these ids) the ranking holds the answer only by luck, so the user counts as live."""
        user_index = self._user_index.get(user_id)
        if user_index is None:
            return False
        rankings = self.rankings
        ranked = exclude_seen and k <= rankings.top and rankings.rows[user_index] >= 0
        return not ranked or restriction.subset is not None

    def live_cost(self, restriction: ResolvedFilter = NOTHING_RESOLVED) -> int:
        """Movies one live search under ``restriction`` may score: the subset it is drawn from, else all."""
        return restriction.subset.size if restriction.subset is not None else self.num_items

    def recommend_live(self, user_index: int, k: int, exclude_seen: bool = True,
                       restriction: ResolvedFilter = NOTHING_RESOLVED) -> Recommendation:
        """Asks the backend, skipping the rankings (the smoke test checks both paths)."""
        seen = self.catalogue.seen_items(user_index) if exclude_seen else NO_ITEMS
        return self._search(self._user_vectors[user_index], k, seen, restriction)

    def _search(self, query: np.ndarray, k: int, excluded: np.ndarray, restriction: ResolvedFilter,
                unknown: list[int] | None = None) -> Recommendation:
        """The backend's answer for ``query``, leaving out ``excluded`` (ascending, distinct) and whatever
        ``restriction`` rules out."""
        exclude = excluded
        if restriction.exclude.size:
            exclude = sorted_union(excluded, restriction.exclude)
        indices, scores = self.top_k.top_k(query, k, exclude, restriction.subset)
        return Recommendation(self._scored(indices, scores), cold_start=False,
                              unknown_movie_ids=_merged(unknown or [], restriction.unknown_movie_ids),
                              eligible_movies=self._eligible(restriction, excluded))

    def recommend_session(self, user_id: str, k: int, recent_movie_ids: Sequence[int] | np.ndarray,
                          exclude_seen: bool = True,
                          restriction: ResolvedFilter = NOTHING_RESOLVED,
                          history: np.ndarray = NO_ITEMS) -> Recommendation:
        """Top k for a caller who just saw ``recent_movie_ids`` (oldest first), after ``history``.

        ``history`` is what the user did since this version was trained (the fresh histories of
        ``recommender_service.fresh_histories``, movie ids, oldest first); the recent movies come after
        it. A known user's history and recent movies are the newest part of their stored history; an
        unknown user's are the whole of it, and the answer is personal as soon as one of them is known.
        With exclude_seen, the answer leaves out the user's seen movies, the history and the recent
        ones. Recent movies this version does not know are reported back and otherwise ignored;
        history movies it does not know are ignored (the caller did not send them). With none known, the
        answer is what it would have been without a session. Raises SessionsUnsupported for recent
        movies on a version without a query encoder; such a version answers a history by leaving its
        movies out (with exclude_seen) of the answer it would give anyway.
        """
        ids = np.asarray(recent_movie_ids, dtype=np.int64).reshape(-1)
        if self.sessions is None and ids.size:
            raise SessionsUnsupported()
        indices = self.movie_indices(ids)
        known = indices >= 0
        unknown = first_occurrences(ids[~known]) if not known.all() else []
        recent = indices[known]
        if history.size:
            earlier = self.movie_indices(history)
            recent = np.concatenate([earlier[earlier >= 0], recent])
        if recent.size == 0:
            answer = self.recommend(user_id, k, exclude_seen, restriction)
            return replace(answer, unknown_movie_ids=_merged(unknown, answer.unknown_movie_ids))
        if self.sessions is None:  # a history on a version without sessions: left out, not used as a query
            if exclude_seen:
                restriction = ResolvedFilter(restriction.subset, sorted_union(restriction.exclude, np.unique(recent)),
                                             restriction.unknown_movie_ids)
            user_index = self._user_index.get(user_id)
            if user_index is None:
                return self._cold_start(k, restriction)
            return self.recommend_live(user_index, k, exclude_seen, restriction)
        user_index = self._user_index.get(user_id)
        if user_index is None:
            query = self.sessions.for_visitor(recent)
            exclude = np.unique(recent) if exclude_seen else NO_ITEMS
        else:
            query = self.sessions.for_user(user_index, recent)
            exclude = np.union1d(self.catalogue.seen_items(user_index), recent) if exclude_seen else NO_ITEMS
        return self._search(query, k, exclude, restriction, unknown)

    def movie_indices(self, movie_ids: np.ndarray) -> np.ndarray:
        """Item index of every id (-1 where this version does not know it): one gather from the dense id
        table when the version has one, else one vectorised binary search."""
        ids = np.asarray(movie_ids, dtype=np.int64)
        table = self._index_by_id
        if table is not None:
            inside = (ids >= 0) & (ids < table.shape[0])
            found = np.full(ids.shape, -1, dtype=np.int64)
            found[inside] = table[ids[inside]]
            return found
        sorted_ids = self._sorted_movie_ids
        position = np.minimum(np.searchsorted(sorted_ids, ids), sorted_ids.shape[0] - 1)
        return np.where(sorted_ids[position] == ids, self.catalogue.movie_order[position], -1).astype(np.int64)

    def movie_index(self, movie_id: int) -> int:
        index = int(self.movie_indices(np.array([movie_id], dtype=np.int64))[0])
        if index < 0:
            raise UnknownMovie(movie_id)  # the served model names its version (recommender_service.model)
        return index

    def similar_items(self, movie_id: int, k: int,
                      restriction: ResolvedFilter = NOTHING_RESOLVED) -> tuple[Scored, Recommendation]:
        """Cosine neighbours in the item space: for a two-tower model, movies its
        towers place together; for EASE, movies with similar co-rating weights.
        Returns the movie asked about and its neighbours that pass ``restriction``."""
        index = self.movie_index(movie_id)
        query = self._scored(np.array([index]), np.ones(1, dtype=np.float32))[0]
        indices, scores = self.top_k.similar(index, k, restriction.exclude, restriction.subset)
        itself = np.array([index], dtype=np.int64)
        eligible = self._eligible(restriction, itself)
        return query, Recommendation(self._scored(indices, scores), cold_start=False,
                                     unknown_movie_ids=restriction.unknown_movie_ids, eligible_movies=eligible)

    def _scored(self, indices: np.ndarray, scores: np.ndarray) -> list[Scored]:
        # One gather and one tolist() per field instead of a numpy scalar per item.
        movies = self._movies
        return [Scored(movie_id, title, score, genres, year) for movie_id, title, score, genres, year in
                zip(self._movie_ids[indices].tolist(), self._titles.take(indices), scores.tolist(),
                    movies.genres_of_many(indices), movies.years[indices].tolist(), strict=True)]
