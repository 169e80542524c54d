"""A version's answers, kept for the calls that repeat them.

An answer without a session is a pure function of (version, user, k,
exclude_seen), so each loaded version keeps the answers it has given, in
the form the caller rendered them (the servicer's response messages): a hit
skips ranking and building ten messages. That matters less for its ~10 us
than for the GIL hand-offs it saves when eight request threads share two
cores. The cache belongs to one :class:`~recommender_service.model.LoadedModel`
and is dropped with it, so no answer outlives the version that gave it.

Sessions are never kept: the movies just watched vary call by call.
"""

from __future__ import annotations

from collections.abc import Hashable

# About 1 KB an entry as a response message: 20 MB at most per version.
MAX_CACHED_ANSWERS = 20_000


class AnswerCache:
    """Answers by key, the first ``limit`` kept; later ones are built each time.

    No lock: a dict read or write is atomic under the GIL, and two threads
    that build the same answer at once build equal ones. The bound may be
    overshot by the number of request threads, never more.
    """

    def __init__(self, limit: int = MAX_CACHED_ANSWERS):
        self.limit = limit
        self._answers: dict[Hashable, object] = {}

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: Hashable):
        """The kept answer, or None."""
        return self._answers.get(key)

    def put(self, key: Hashable, answer) -> None:
        if len(self._answers) < self.limit:
            self._answers[key] = answer
