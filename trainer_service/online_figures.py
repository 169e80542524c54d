"""Each version's online hit rate, for ListVersions: what recommender replicas reported to the event store.

Replicas judge their own recommendations (followed by one of the recommended movies within the user's
next 10 interactions or 24 hours, or not) and write running totals per version to the store every few
seconds (``EventStore.report_online``); the trainer only reads them, summed over replicas, in one query
per ListVersions. Reading them never fails the listing: with ``--events none`` or a store that cannot
be read now, every version's figures are 0 and the problem says why.
"""

from __future__ import annotations

import logging

from movierec_common.event_store import EventStore, IncompatibleStore, OnlineOutcome, StoreUnavailable
from movierec_common.logs import event

log = logging.getLogger(__name__)

OFF = "interactions are off on this trainer (--events none): no online figures"


def online_outcomes(store: EventStore | None) -> tuple[dict[int, OnlineOutcome], str]:
    """Every version's outcomes, and "" or why there are none to read."""
    if store is None:
        return {}, OFF
    try:
        return store.online_outcomes(), ""
    except (StoreUnavailable, IncompatibleStore) as exc:
        event(log, "online figures unreadable", logging.WARNING, store=store.description, error=str(exc))
        return {}, f"the event store could not be read, so the online figures are 0: {exc}"
