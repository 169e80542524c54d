"""The served versions' online hit rate: did the user pick one of the movies they were recommended?

Every answer gets a ``recommendation_id``. A recommendation stays *open* until it is judged: a **hit**
when one of its user's next :data:`JUDGED_AFTER_INTERACTIONS` interactions (in store order, from any
replica) is with one of its movies, a **miss** when those pass without one, or when it is
:data:`JUDGED_AFTER_SECONDS` old without them. An interaction that cites the recommendation by id
counts the same as one that does not: the rate measures what users did after an answer, not whether
their client echoed the id.

It is kept in memory, never as a write per call (that would cost serving latency): a replica
remembers each user's newest :data:`MAX_OPEN_PER_USER` open recommendations, at most ``max_open`` in
all and at most ``max_open_movies`` recommended movies in all (8 bytes each; about 200 bytes per
recommendation besides, so the defaults hold about 30 MB); the oldest one pushed out before it is
judged is *dropped*, counted in neither judged nor hits. Each replica counts what it recommended; the
totals per version go to Prometheus here and, every few seconds, to the event store
(``EventStore.report_online``), where the trainer's ListVersions sums every replica's.

All times are the caller's ``now`` (seconds), so the rules can be tested on a scripted sequence.
"""

from __future__ import annotations

import itertools
import os
import threading
import uuid
from array import array
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from movierec_common import metrics
from movierec_common.event_store import OnlineOutcome

JUDGED_AFTER_INTERACTIONS = 10
JUDGED_AFTER_SECONDS = 24 * 3600
MAX_OPEN_PER_USER = 16
DEFAULT_MAX_OPEN = 100_000
DEFAULT_MAX_OPEN_MOVIES = 2_000_000


@dataclass(eq=False, slots=True)  # compared by identity: two answers alike are still two recommendations
class _Open:
    version: int
    movies: array[int]  # 8 bytes a movie; ``in`` scans it in C (k is at most 1,000)
    created: float
    remaining: int = JUDGED_AFTER_INTERACTIONS
    judged: bool = False


class OnlineHits:
    """Open recommendations per user, judged as interactions arrive; totals per version."""

    def __init__(self, max_open: int = DEFAULT_MAX_OPEN, replica: str | None = None,
                 max_open_movies: int = DEFAULT_MAX_OPEN_MOVIES) -> None:
        self.max_open = max_open
        self.max_open_movies = max_open_movies
        self._open_movies = 0
        # Unique across replicas and restarts: a replica's ids never collide with another's.
        self.replica = replica or f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._prefix = uuid.uuid4().hex[:12]
        self._counter = itertools.count(1)
        self._users: dict[str, deque[_Open]] = {}
        self._by_age: deque[tuple[str, _Open]] = deque()  # every open one, oldest first
        self._open = 0
        self._totals: dict[int, OnlineOutcome] = {}
        self.dropped = 0
        self._lock = threading.Lock()

    def new_id(self, version: int) -> str:
        """A recommendation id: the version, this process's random prefix and a counter (~0.1 us)."""
        return f"{version}-{self._prefix}-{next(self._counter)}"

    def recommended(self, user_id: str, version: int, movie_ids: Iterable[int], now: float) -> None:
        """Opens a recommendation of ``movie_ids`` to ``user_id`` by ``version``."""
        entry = _Open(version, array("q", movie_ids), now)
        if not entry.movies:
            return  # nothing was recommended: nothing to judge
        with self._lock:
            queue = self._users.get(user_id)
            if queue is None:
                queue = self._users[user_id] = deque()
            if len(queue) >= MAX_OPEN_PER_USER:
                self._drop(queue.popleft())
            queue.append(entry)
            self._by_age.append((user_id, entry))
            self._open += 1
            self._open_movies += len(entry.movies)
            while self._open > self.max_open or self._open_movies > self.max_open_movies:
                self._drop_oldest()

    def observe(self, user_id: str, movie_id: int, now: float) -> None:
        """An interaction of ``user_id`` with ``movie_id``, in store order: judges their open ones."""
        with self._lock:
            queue = self._users.get(user_id)
            if not queue:
                return
            for entry in list(queue):
                if now - entry.created >= JUDGED_AFTER_SECONDS:
                    self._judge(user_id, entry, hit=False)
                elif movie_id in entry.movies:
                    self._judge(user_id, entry, hit=True)
                else:
                    entry.remaining -= 1
                    if entry.remaining <= 0:
                        self._judge(user_id, entry, hit=False)

    def expire(self, now: float) -> None:
        """Judges as misses the recommendations :data:`JUDGED_AFTER_SECONDS` old (run every few seconds)."""
        with self._lock:
            by_age = self._by_age
            while by_age and (by_age[0][1].judged or now - by_age[0][1].created >= JUDGED_AFTER_SECONDS):
                user_id, entry = by_age.popleft()
                if not entry.judged:
                    self._judge(user_id, entry, hit=False)

    def totals(self) -> dict[int, OnlineOutcome]:
        """Judged and hits per version, since this replica started."""
        with self._lock:
            return dict(self._totals)

    @property
    def open(self) -> int:
        with self._lock:
            return self._open

    # -- under the lock
    def _judge(self, user_id: str, entry: _Open, hit: bool) -> None:
        """Counts ``entry``. The age queue drops judged entries lazily: at its front, and all at once when
        they outnumber the open ones (else a day of judged answers would pile up behind an open one)."""
        entry.judged = True
        self._open -= 1
        self._open_movies -= len(entry.movies)
        if len(self._by_age) > 2 * self._open + 1024:
            self._by_age = deque(pair for pair in self._by_age if not pair[1].judged)
        queue = self._users.get(user_id)
        if queue is not None:
            queue.remove(entry)
            if not queue:
                del self._users[user_id]
        total = self._totals.get(entry.version, OnlineOutcome()) + OnlineOutcome(1, int(hit))
        self._totals[entry.version] = total
        metrics.online_outcome(entry.version, hit, total.hit_rate)

    def _drop(self, entry: _Open) -> None:
        """Forgets an open one without judging it (the per-user bound pushed it out)."""
        entry.judged = True  # the age queue skips it
        self._open -= 1
        self._open_movies -= len(entry.movies)
        self.dropped += 1

    def _drop_oldest(self) -> None:
        while self._by_age:
            user_id, entry = self._by_age.popleft()
            if entry.judged:
                continue
            queue = self._users.get(user_id)
            if queue is not None:
                queue.remove(entry)
                if not queue:
                    del self._users[user_id]
            self._drop(entry)
            return

