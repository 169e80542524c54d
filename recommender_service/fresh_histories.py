"""Fresh histories: what each user did after the served version was trained, held in memory.

A served version knows each user's history up to its training data. What a user did since (recorded
through RecordInteractions, on this replica or another) is the newest part of their history: the
recommender hands it to the version as a session (``recommender_service.sessions``), so it shapes the
answer and is excluded with ``exclude_seen``, for every kind, and a visitor the version never saw gets
a personal answer.

Entries are keyed by the store's sequence, so the same interaction arriving twice (from the writing
replica at once, then from the store's follower) is held once, and a version trained on interactions
up to a watermark ``w`` is handed only those after ``w``: nothing counts twice.

Memory is bounded twice, as sessions are: a user keeps their newest :data:`MAX_PER_USER`
interactions, and the whole holds at most ``max_total`` (:data:`DEFAULT_MAX_TOTAL`); past it, the
users who did something least recently are forgotten first (their answers fall back to what the
served version alone knows). Each interaction costs 16 bytes (two int64 arrays) plus about 200 bytes
per user, so the default cap is ~32 MB of interactions.
"""

from __future__ import annotations

import bisect
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

MAX_PER_USER = 1000  # as a session's recent_movie_ids (servicer.MAX_RECENT_MOVIES)
DEFAULT_MAX_TOTAL = 2_000_000

NO_MOVIES = np.zeros(0, dtype=np.int64)

Row = tuple[int, str, int]  # (sequence, user_id, movie_id): what EventStore.follow_after reads


class _History:
    """One user's interactions, ascending by sequence (two parallel int64 arrays)."""

    __slots__ = ("movies", "sequences")

    def __init__(self) -> None:
        self.sequences = array("q")
        self.movies = array("q")

    def add(self, sequence: int, movie_id: int) -> bool:
        """Adds one interaction at its place; False when that sequence is already held."""
        sequences = self.sequences
        if not sequences or sequence > sequences[-1]:  # the usual case: newer than everything held
            sequences.append(sequence)
            self.movies.append(movie_id)
            return True
        position = bisect.bisect_left(sequences, sequence)
        if position < len(sequences) and sequences[position] == sequence:
            return False
        sequences.insert(position, sequence)
        self.movies.insert(position, movie_id)
        return True

    def drop_oldest(self, count: int) -> None:
        del self.sequences[:count]
        del self.movies[:count]

    def drop_through(self, watermark: int) -> int:
        """Forgets the interactions at or below ``watermark``; returns how many."""
        count = bisect.bisect_right(self.sequences, watermark)
        if count:
            self.drop_oldest(count)
        return count


@dataclass(frozen=True)
class HeldCounts:
    users: int
    interactions: int


class FreshHistories:
    """Per-user interactions after a watermark, bounded; safe to use from many threads."""

    def __init__(self, max_total: int = DEFAULT_MAX_TOTAL, max_per_user: int = MAX_PER_USER) -> None:
        if max_total < 1 or max_per_user < 1:
            raise ValueError("fresh history bounds must be positive")
        self.max_total = max_total
        self.max_per_user = max_per_user
        self._users: OrderedDict[str, _History] = OrderedDict()  # least recently active first
        self._total = 0
        self._lock = threading.Lock()

    def add(self, rows: Iterable[Row]) -> int:
        """Holds ``rows``, ``(sequence, user_id, movie_id)`` each (any order; ones already held are skipped);
        returns how many were new."""
        added = 0
        with self._lock:
            users = self._users
            for sequence, user_id, movie_id in rows:
                history = users.get(user_id)
                if history is None:
                    history = users[user_id] = _History()
                else:
                    users.move_to_end(user_id)
                if not history.add(sequence, movie_id):
                    continue
                added += 1
                self._total += 1
                if len(history.sequences) > self.max_per_user:
                    history.drop_oldest(1)
                    self._total -= 1
            while self._total > self.max_total:
                _, forgotten = users.popitem(last=False)
                self._total -= len(forgotten.sequences)
        return added

    def movies_after(self, user_id: str, watermark: int) -> np.ndarray:
        """The user's movie ids after ``watermark``, oldest first (int64; empty for most users)."""
        history = self._users.get(user_id)  # a plain dict read: no lock on the common path of no history
        if history is None:
            return NO_MOVIES
        with self._lock:
            sequences = history.sequences
            start = bisect.bisect_right(sequences, watermark) if sequences and sequences[0] <= watermark else 0
            return np.array(history.movies[start:], dtype=np.int64)

    def drop_through(self, watermark: int) -> int:
        """Forgets every interaction at or below ``watermark`` (a version trained on them is served);
        returns how many. Users left with none are forgotten."""
        dropped = 0
        with self._lock:
            for user_id in [user for user, history in self._users.items()
                            if history.sequences and history.sequences[0] <= watermark]:
                history = self._users[user_id]
                dropped += history.drop_through(watermark)
                if not history.sequences:
                    del self._users[user_id]
            self._total -= dropped
        return dropped

    def counts(self) -> HeldCounts:
        with self._lock:
            return HeldCounts(users=len(self._users), interactions=self._total)
