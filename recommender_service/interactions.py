"""Taking in what users did: a RecordInteractions batch checked as a whole, then written to the event
store in one transaction (``movierec_common.event_store``).

Why all or nothing: a caller who resends a batch after an error must be able to resend all of it. A
batch half stored, with one bad field in the middle, would leave the caller to work out which half;
here a bad field is refused before anything is written (naming its index), a conflicting resend is
refused by the store inside the transaction (naming the id), and an identical resend stores nothing
and succeeds, so "resend everything with the same event ids" is always right.

Plain values in, plain values out: the servicer translates the protos and the statuses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from movierec_common.event_store import EventConflict, EventStore, Interaction, StoredInteraction, StoreUnavailable
from recommender_service.errors import InteractionConflict, InvalidRequest, StoreDown

MAX_INTERACTIONS_PER_CALL = 1000
MAX_EVENT_ID_BYTES = 128
MIN_RATING, MAX_RATING = 0.5, 5.0
# occurred_at may be a little ahead of this machine's clock (the caller's clock runs fast), not a day.
MAX_FUTURE_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Recorded:
    stored: int
    duplicates: int
    watermark: int
    unknown_movie_ids: list[int]
    rows: tuple[StoredInteraction, ...] = ()  # the new rows at their sequences (fresh histories take them)


def check_size(count: int) -> None:
    """Raises InvalidRequest for an empty batch or one over the limit (checked before any is read)."""
    if not count:
        raise InvalidRequest("interactions is empty: send 1 to 1,000 interactions")
    if count > MAX_INTERACTIONS_PER_CALL:
        raise InvalidRequest(f"{count:,} interactions in one call; at most {MAX_INTERACTIONS_PER_CALL:,}: "
                             f"split the batch")


def check_batch(interactions: Sequence[Interaction], check_user_id: Callable[[str, str], None],
                now: float | None = None) -> None:
    """Raises InvalidRequest naming the first bad interaction's index and field (nothing is stored then)."""
    check_size(len(interactions))
    latest = (time.time() if now is None else now) + MAX_FUTURE_SECONDS
    for index, interaction in enumerate(interactions):
        where = f"interactions[{index}]"
        event_id = interaction.event_id
        if not event_id.strip():
            raise InvalidRequest(f"{where}.event_id is empty: give each interaction an id of your own, unique "
                                 f"per interaction, so a resend stores nothing twice")
        if len(event_id.encode("utf-8")) > MAX_EVENT_ID_BYTES:
            raise InvalidRequest(f"{where}.event_id is longer than {MAX_EVENT_ID_BYTES} bytes")
        check_user_id(interaction.user_id, f"{where}.user_id")
        if interaction.recommendation_id is not None and len(
                interaction.recommendation_id.encode("utf-8")) > MAX_EVENT_ID_BYTES:
            raise InvalidRequest(f"{where}.recommendation_id is longer than {MAX_EVENT_ID_BYTES} bytes; send the "
                                 f"id an answer carried")
        rating = interaction.rating
        if rating is not None and not (math.isfinite(rating) and MIN_RATING <= rating <= MAX_RATING):
            raise InvalidRequest(f"{where}.rating is {rating}; a rating is between {MIN_RATING} and {MAX_RATING} "
                                 f"(leave it unset for an interaction without one)")
        if not 0 < interaction.occurred_at <= latest:
            raise InvalidRequest(f"{where}.occurred_at is {interaction.occurred_at:.0f} s after 1970; it must be "
                                 f"after 1970 and not more than a day ahead of this server's clock (leave it unset "
                                 f"for the time of receipt)")


def record(store: EventStore, interactions: Sequence[Interaction],
           movie_indices: Callable[[np.ndarray], np.ndarray] | None) -> Recorded:
    """Writes a checked batch; ``movie_indices`` (the served version's, or None before one is loaded) says
    which movies it does not know. Raises InteractionConflict, StoreDown."""
    try:
        outcome = store.record(interactions)
    except EventConflict as conflict:
        raise InteractionConflict(conflict.event_id, conflict.index) from None
    except StoreUnavailable as down:
        raise StoreDown(str(down)) from None
    unknown: list[int] = []
    if movie_indices is not None:
        ids = np.fromiter((i.movie_id for i in interactions), dtype=np.int64, count=len(interactions))
        unknown = list(dict.fromkeys(ids[movie_indices(ids) < 0].tolist()))
    return Recorded(outcome.stored, outcome.duplicates, outcome.watermark, unknown, outcome.rows)
