"""One served version as a call sees it: :class:`LoadedModel`.

The manager (``recommender_service.registry``) swaps one reference to a
LoadedModel; a call reads that reference once and uses what it got to its
end, so an in-flight call finishes on the version it started with, and
everything tied to a version (its number in every response and error) dies
with it. Answers kept for repeats live in the servicer
(``recommender_service.answers.ServedAnswers``), under one byte budget for
the whole process, not one per version.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from movierec_common.artifact import VersionMetadata
from recommender_service.errors import FilterNeedsMetadata, SessionsUnsupported, UnknownMovie
from recommender_service.movie_filter import NOTHING_RESOLVED, MovieFilter, ResolvedFilter, distinct_sorted
from recommender_service.retrieval import Recommendation, Retriever, Scored
from recommender_service.top_k import NO_ITEMS

T = TypeVar("T")


@dataclass(frozen=True)
class LoadedModel:
    version: int
    retriever: Retriever
    metadata: VersionMetadata
    loaded_at: float
    serving: dict[str, float] = field(default_factory=dict)  # how it is served (GetModelStatus shows it)
    # (hidden ids as handed in, their indices here): see hidden_indices
    _hidden: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def model_kind(self) -> str:
        return self.metadata.model_kind

    @functools.cached_property
    def genre_counts(self) -> list[tuple[str, int]]:
        """(genre, movies having it) of this version, counted once (a pass per genre over its masks)."""
        return self.retriever.catalogue.movies.genre_counts()

    def hidden_indices(self, hidden_movie_ids: np.ndarray) -> np.ndarray:
        """The operators' hidden movies (ids, ascending) as this version's indices, ascending; movies it
        does not know are nothing to hide. Resolved once per set of rules: the last answer is kept, keyed
        by the array itself (the registry hands out one immutable array per set of rules)."""
        kept = self._hidden
        if kept is not None and kept[0] is hidden_movie_ids:
            return kept[1]
        indices = self.retriever.movie_indices(hidden_movie_ids) if hidden_movie_ids.size else NO_ITEMS
        resolved = distinct_sorted(indices[indices >= 0])
        object.__setattr__(self, "_hidden", (hidden_movie_ids, resolved))  # a racing thread stores the same
        return resolved

    def restriction(self, movie_filter: MovieFilter, hidden_movie_ids: np.ndarray) -> ResolvedFilter:
        """What this version may answer a call with: ``movie_filter`` resolved, hidden movies excluded.

        Raises FilterNeedsMetadata (naming this version) or InvalidRequest.
        """
        hidden = self.hidden_indices(hidden_movie_ids)
        if movie_filter.is_empty and not hidden.size:
            return NOTHING_RESOLVED
        try:
            return self.retriever.resolve(movie_filter, hidden)
        except FilterNeedsMetadata:
            raise FilterNeedsMetadata(self.version) from None

    def recommend(self, user_id: str, k: int, exclude_seen: bool,
                  render: Callable[[LoadedModel, Recommendation], T], recent_movie_ids: Sequence[int] = (),
                  restriction: ResolvedFilter = NOTHING_RESOLVED, history: np.ndarray = NO_ITEMS) -> T:
        """One Recommend answer as ``render(self, ranked)`` makes it, computed now (nothing is kept here).
        ``history``: the user's fresh history (movie ids after this version's watermark, oldest first).

        Raises SessionsUnsupported for a session on a version published before sessions.
        """
        if len(recent_movie_ids) or history.size:  # a session or a fresh history varies call by call: never kept
            try:
                ranked = self.retriever.recommend_session(user_id, k, np.asarray(recent_movie_ids, dtype=np.int64),
                                                          exclude_seen, restriction, history)
            except SessionsUnsupported:
                raise SessionsUnsupported(self.version) from None
            return render(self, ranked)
        return render(self, self.retriever.recommend(user_id, k, exclude_seen, restriction))

    def similar_items(self, movie_id: int, k: int,
                      restriction: ResolvedFilter = NOTHING_RESOLVED) -> tuple[Scored, Recommendation]:
        """The movie and its k nearest that pass ``restriction``; raises UnknownMovie, naming this version,
        for an id it does not know."""
        try:
            return self.retriever.similar_items(movie_id, k, restriction)
        except UnknownMovie:
            raise UnknownMovie(movie_id, self.version) from None
