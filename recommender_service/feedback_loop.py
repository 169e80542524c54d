"""A replica's side of the feedback loop: interactions in, fresh histories out, answers judged.

One object, :class:`FeedbackLoop`, owns what the servicer needs when ``--events`` names a store:

- **Recording.** :meth:`FeedbackLoop.record` writes a checked batch durably, then adds its new rows to
  the fresh histories before returning, so this replica's next answer for the user counts them (read
  your writes).
- **Following.** A thread reads what every replica recorded, in store order, every
  :data:`POLL_SECONDS`: other replicas' interactions shape this one's answers within about that
  long. It starts after the served version's watermark (the interactions the version was trained
  on are in it), reads on from there, and when a version trained on more is served, forgets what that
  version already knows. A rollback to a version trained on less reads the difference again.
- **Judging.** Each answer gets a recommendation id and is judged by the user's next interactions
  (``recommender_service.online_hits``); the totals go to the store every :data:`REPORT_SECONDS`.

While the store is down, answers keep using the fresh histories already held; recording answers
UNAVAILABLE; the follower retries with a growing pause (up to :data:`MAX_RETRY_SECONDS`) and says why
in ``status().problem``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from movierec_common import metrics
from movierec_common.event_store import EventStore, IncompatibleStore, Interaction, StoreUnavailable
from movierec_common.logs import event
from recommender_service.fresh_histories import NO_MOVIES, FreshHistories, Row
from recommender_service.interactions import Recorded, record
from recommender_service.model import LoadedModel
from recommender_service.online_hits import OnlineHits

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2      # how often the follower asks the store for news: well inside the 1 s promise
PAGE = 10_000           # rows per read: a start-up that reads a long tail does it in steps
MAX_RETRY_SECONDS = 5.0
REPORT_SECONDS = 5.0    # how often this replica's online totals go to the store


@dataclass(frozen=True)
class LoopStatus:
    store: str
    followed: int
    fresh_users: int
    fresh_interactions: int
    problem: str


def served_watermark(model: LoadedModel, store_id: str | None) -> int:
    """The store position up to which ``model`` was trained on interactions: those are in the model, not
    fresh. 0 for a version trained on base data alone, or on another store's interactions (its watermark
    numbers another order), or when this store's id is not known yet (it is read with the first follow)."""
    trained = model.metadata.interactions
    if trained is None or not trained.watermark:
        return 0
    if store_id is not None and trained.store_id and trained.store_id != store_id:
        return 0
    return trained.watermark


class FeedbackLoop:
    """The event store, the fresh histories it feeds and the online hit rate, for one replica."""

    def __init__(self, store: EventStore, current_model: Callable[[], LoadedModel | None],
                 histories: FreshHistories | None = None, online: OnlineHits | None = None,
                 poll_seconds: float = POLL_SECONDS) -> None:
        self.store = store
        self.histories = histories or FreshHistories()
        self.online = online or OnlineHits()
        self._current_model = current_model
        self._poll = poll_seconds
        self._store_id: str | None = None
        self._floor: int | None = None   # the watermark the held histories start after
        self._followed = 0               # the highest sequence read from the store
        # Each interaction is judged once: the follower judges what it reads past _judged_through except
        # the sequences this replica wrote and judged at once (_local, until the follower passes them).
        self._judged_through = 0
        self._local: set[int] = set()
        self._taking = threading.Lock()
        self._problem = ""
        self._foreign_warned: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="events-follower", daemon=True)
        self._last_report = 0.0

    # -- the request path
    def record(self, interactions: Sequence[Interaction],
               movie_indices: Callable[[np.ndarray], np.ndarray] | None) -> Recorded:
        """Stores the batch (raises as ``interactions.record``), then holds and judges its new rows at once."""
        recorded = record(self.store, interactions, movie_indices)
        if recorded.rows:
            rows = [(row.sequence, row.interaction.user_id, row.interaction.movie_id) for row in recorded.rows]
            with self._taking:
                mine = [row for row in rows if row[0] > self._judged_through]
                self._local.update(row[0] for row in mine)
                self._take(mine, rows)
        return recorded

    def fresh_movies(self, user_id: str, model: LoadedModel) -> np.ndarray:
        """The user's movie ids after ``model``'s watermark, oldest first (empty for most users)."""
        return self.histories.movies_after(user_id, served_watermark(model, self._store_id))

    def recommended(self, user_id: str, version: int, movie_ids: Sequence[int]) -> str:
        """Opens a recommendation for judging; returns its id."""
        self.online.recommended(user_id, version, movie_ids, time.time())
        return self.online.new_id(version)

    # -- following the store
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stops following, reports the online totals a last time, closes the store."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._report(force=True)
        self.store.close()

    def status(self) -> LoopStatus:
        held = self.histories.counts()
        return LoopStatus(store=self.store.description, followed=self._followed, fresh_users=held.users,
                          fresh_interactions=held.interactions, problem=self._problem)

    def follow_once(self) -> int:
        """Reads what the store has after the followed position (up to :data:`PAGE` rows) into the fresh
        histories; returns how many rows it read. Raises StoreUnavailable, IncompatibleStore."""
        model = self._current_model()
        if model is None:
            return 0  # the version's watermark says where to start
        if self._store_id is None:
            self._store_id = self.store.store_id
        floor = served_watermark(model, self._store_id)
        self._warn_if_foreign(model)
        if self._floor is None or floor < self._floor:  # the first version, or a rollback below what is held
            self._followed = floor if self._floor is None else min(self._followed, floor)
            self._floor = floor
        elif floor > self._floor:  # a version trained on more: what it knows is not fresh any more
            self.histories.drop_through(floor)
            self._floor = floor
            self._followed = max(self._followed, floor)
        rows = self.store.follow_after(self._followed, PAGE)
        if rows:
            last = rows[-1][0]
            with self._taking:
                judged, local = self._judged_through, self._local
                # What this replica wrote it holds and judged already: only the others' rows are news. Rows
                # at or below what was judged come again only after a rollback, to be held again.
                news = [row for row in rows if row[0] > judged and row[0] not in local]
                hold = news if rows[0][0] > judged else [row for row in rows if row[0] <= judged or row[0] not in local]
                self._local = {sequence for sequence in local if sequence > last} if local else local
                self._judged_through = max(judged, last)
                self._followed = last
                self._take(news, hold)
        metrics.events_followed(self._followed, self.histories.counts().interactions)
        return len(rows)

    def _take(self, judge: Sequence[Row], hold: Sequence[Row]) -> None:
        """Holds ``hold`` in the fresh histories (already held ones are skipped) and judges the open
        recommendations of ``judge``'s users."""
        self.histories.add(hold)
        now = time.time()
        observe = self.online.observe
        for _, user_id, movie_id in judge:
            observe(user_id, movie_id, now)

    def _follow(self) -> None:
        pause = self._poll
        while not self._stop.wait(pause):
            try:
                read = self.follow_once()
                if self._problem:
                    event(log, "event store readable again", store=self.store.description)
                self._problem = ""
                pause = 0.0 if read == PAGE else self._poll
            except (StoreUnavailable, IncompatibleStore) as error:
                if not self._problem:
                    event(log, "event store unreadable: answers use the fresh histories held", logging.WARNING,
                          store=self.store.description, error=str(error))
                self._problem = str(error)
                pause = min(max(pause * 2, self._poll), MAX_RETRY_SECONDS)
            now = time.time()
            self.online.expire(now)
            self._report()

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_report < REPORT_SECONDS:
            return
        self._last_report = now
        totals = self.online.totals()
        if not totals:
            return
        try:
            self.store.report_online(self.online.replica, totals)
        except (StoreUnavailable, IncompatibleStore) as error:
            event(log, "online hit rate not reported to the event store", logging.DEBUG, error=str(error))

    def _warn_if_foreign(self, model: LoadedModel) -> None:
        trained = model.metadata.interactions
        if (trained is None or not trained.store_id or trained.store_id == self._store_id
                or model.version in self._foreign_warned):
            return
        self._foreign_warned.add(model.version)
        event(log, "the served version was trained on another event store's interactions: its watermark is "
                   "ignored here, so they may count twice", logging.WARNING, version=model.version,
              trained_on=trained.store, following=self.store.description)


__all__ = ["NO_MOVIES", "FeedbackLoop", "LoopStatus", "served_watermark"]
