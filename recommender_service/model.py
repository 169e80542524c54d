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

from movierec_common.artifact import VersionMetadata
from recommender_service.errors import SessionsUnsupported, UnknownMovie
from recommender_service.retrieval import Recommendation, Retriever, Scored

T = TypeVar("T")


@dataclass(frozen=True)
class LoadedModel:
    version: int
    retriever: Retriever
    metadata: VersionMetadata
    loaded_at: float
    serving: dict[str, float] = field(default_factory=dict)  # how it is served (GetModelStatus shows it)

    @property
    def model_kind(self) -> str:
        return self.metadata.model_kind

    @functools.cached_property
    def genre_counts(self) -> list[tuple[str, int]]:
        """(genre, movies having it) of this version, counted once (a pass per genre over its masks)."""
        return self.retriever.catalogue.movies.genre_counts()

    def recommend(self, user_id: str, k: int, exclude_seen: bool,
                  render: Callable[[LoadedModel, Recommendation], T], recent_movie_ids: Sequence[int] = ()) -> T:
        """One Recommend answer as ``render(self, ranked)`` makes it, computed now (nothing is kept here).

        Raises SessionsUnsupported for a session on a version published before sessions.
        """
        if len(recent_movie_ids):  # a session varies call by call: never kept
            if self.retriever.sessions is None:
                raise SessionsUnsupported(self.version)
            return render(self, self.retriever.recommend_session(user_id, k, list(recent_movie_ids), exclude_seen))
        return render(self, self.retriever.recommend(user_id, k, exclude_seen))

    def similar_items(self, movie_id: int, k: int) -> tuple[Scored, list[Scored]]:
        """The movie and its k nearest; raises UnknownMovie, naming this version, for an id it does not know."""
        try:
            return self.retriever.similar_items(movie_id, k)
        except UnknownMovie:
            raise UnknownMovie(movie_id, self.version) from None
