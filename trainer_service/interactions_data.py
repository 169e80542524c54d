"""Recorded interactions added to a job's base data: read from the event store up to a watermark and joined.

A ``TrainRequest`` whose ``dataset.interactions.include`` is set trains on its base data (files, a
MovieLens release) plus every interaction the trainer's event store (``--events``) holds up to a
store position, the *watermark*. The join's rules (issue 19):

* **User ids are strings everywhere.** The base data's integer ids are their decimal strings (what
  ``ratings.build_ratings`` keeps and a published version's ``user_ids`` hold, and what the recommender
  looks users up by), so an interaction by ``"42"`` is base user 42's. Any other id (``"alice"``, and
  ``"042"`` too: strings are compared as written) joins as a new user, numbered after the base users in
  the order of their first interaction.
* **The latest interaction per (user, movie) wins**, in store order, over the base data too: a base
  rating of a pair that an interaction gives again is replaced, and so are earlier interactions of the
  pair (each counted in ``replaced``). Every interaction counts as a positive, as every rating does today
  (no kind reads the rating's value). A repeated pair is never a dataset error here: the base files'
  check that refuses a pair rated twice runs on the files alone, before this join.
* **occurred_at becomes the timestamp** (whole seconds, rounded down, as the files hold them), so
  histories, the ``last_n_per_user`` holdout and the sequential kind see interactions in time. The
  interactions come after the base rows, in store order, and a tie in time is broken by that position
  (``ratings.time_order_key``): an interaction sorts after a base rating of the same second.
* **An unset rating becomes** :data:`UNRATED` (0.0). Outside the 0.5-5 scale, so "no rating given" stays
  distinguishable from every real rating, and finite, so nothing downstream meets a NaN. Since every row
  is a positive whatever its value, it changes no model; it does enter the fingerprint.
* **Movies the items data does not list** are left out of training and counted (``unknown_movies``):
  they may be new movies, which a model cannot score before the catalogue has them.
* **The fingerprint covers the interactions**: a digest of the base fingerprint and of every row the join
  added or removed, so two versions compare in the regression gate only when they trained on the same
  ratings. A join that changed nothing (no interaction used) keeps the base fingerprint: the same ratings.

What became of the interactions is the version's ``InteractionsRecord`` (metadata.json): the store's
identity and description, the watermark, and the counts ``read``, ``used``, ``replaced``,
``unknown_movies`` and ``new_users``.

Memory: the store is read in pages of :data:`PAGE` rows (``EventStore.read_up_to``); each page becomes four
numpy columns (20 bytes a row) at once, and only the distinct new user ids are kept as Python strings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from movierec_common.artifact import InteractionsRecord
from movierec_common.event_store import EventStore, IncompatibleStore, StoredInteraction, StoreUnavailable
from trainer_service.errors import EventStoreUnavailable, InvalidRequest
from trainer_service.ratings import Ratings, lookup, pair_keys

__all__ = ["PAGE", "UNRATED", "Joined", "add_interactions", "resolve_watermark"]

PAGE = 50_000  # interactions per read from the store
UNRATED = 0.0  # the rating of an interaction given without one (see the module docstring)
_FINGERPRINT_TAG = b"movierec interactions v1\0"


@dataclass(frozen=True)
class Joined:
    """The base data with the interactions added, and what became of them."""

    ratings: Ratings
    record: InteractionsRecord


def resolve_watermark(store: EventStore, up_to: int) -> int:
    """The store position a job reads up to: ``up_to``, or the latest when it is 0 or beyond the latest
    (no write can be numbered at or below the latest later, so what is read is final)."""
    if up_to < 0:
        raise InvalidRequest(f"dataset.interactions.up_to must be 0 (the latest) or a store position, got {up_to}")
    latest = store.latest_sequence()
    return latest if up_to == 0 or up_to > latest else up_to


class _UserCodes:
    """Dense user indices of string ids: the base users' own, and new ones numbered after them."""

    def __init__(self, base_ids: np.ndarray):
        self._order = np.argsort(base_ids)
        self._sorted = base_ids[self._order]
        self.n_base = len(base_ids)
        self.new: dict[str, int] = {}  # distinct new user ids only, never a row

    def codes(self, users: np.ndarray) -> np.ndarray:
        """Each row's user index; a new user is numbered on first sight, in store order (whatever the paging)."""
        distinct, first, inverse = np.unique(users, return_index=True, return_inverse=True)
        codes = np.full(len(distinct), -1, dtype=np.int64)
        if self.n_base:
            slots = np.minimum(np.searchsorted(self._sorted, distinct), self.n_base - 1)
            found = self._sorted[slots] == distinct
            codes[found] = self._order[slots[found]]
        unseen = np.flatnonzero(codes < 0)
        for index in unseen[np.argsort(first[unseen], kind="stable")]:
            codes[index] = self.new.setdefault(str(distinct[index]), self.n_base + len(self.new))
        result: np.ndarray = codes[inverse.reshape(-1)]
        return result


@dataclass
class _Columns:
    """The interactions read so far, as column chunks (one per page)."""

    users: list[np.ndarray] = dataclasses.field(default_factory=list)
    items: list[np.ndarray] = dataclasses.field(default_factory=list)
    ratings: list[np.ndarray] = dataclasses.field(default_factory=list)
    stamps: list[np.ndarray] = dataclasses.field(default_factory=list)
    read: int = 0

    def add(self, page: Sequence[StoredInteraction], users: _UserCodes, movie_ids: np.ndarray) -> None:
        count = len(page)
        rows = [stored.interaction for stored in page]
        self.users.append(users.codes(np.array([row.user_id for row in rows], dtype=str)))
        movies = np.fromiter((row.movie_id for row in rows), dtype=np.int64, count=count)
        self.items.append(lookup(movie_ids, movies))
        self.ratings.append(np.fromiter((UNRATED if row.rating is None else row.rating for row in rows),
                                        dtype=np.float32, count=count))
        self.stamps.append(np.fromiter((math.floor(row.occurred_at) for row in rows), dtype=np.int64, count=count))
        self.read += count

    def joined(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        def cat(chunks: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.concatenate(chunks).astype(dtype, copy=False) if chunks else np.zeros(0, dtype=dtype)

        return cat(self.users, np.int64), cat(self.items, np.int32), cat(self.ratings, np.float32), \
            cat(self.stamps, np.int64)


def _latest_per_pair(keys: np.ndarray) -> np.ndarray:
    """Mask of the rows whose (user, movie) key does not occur again later."""
    _, first_from_end = np.unique(keys[::-1], return_index=True)
    keep = np.zeros(len(keys), dtype=bool)
    keep[len(keys) - 1 - first_from_end] = True
    return keep


def _in_sorted(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    if not len(sorted_keys):
        return np.zeros(len(queries), dtype=bool)
    slots = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
    found: np.ndarray = sorted_keys[slots] == queries
    return found


def _fingerprint(base: Ratings, new_ids: np.ndarray, removed: np.ndarray, *columns: np.ndarray) -> str:
    digest = hashlib.sha256(_FINGERPRINT_TAG)
    parts = [base.fingerprint.encode(), "\0".join(new_ids.tolist()).encode("utf-8"),
             removed.astype(np.int64).tobytes(), *(np.ascontiguousarray(c).tobytes() for c in columns)]
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def add_interactions(base: Ratings, store: EventStore, up_to: int, *,
                     check_cancelled: Callable[[], None] = lambda: None, page: int = PAGE) -> Joined:
    """``base`` with every interaction of ``store`` up to position ``up_to`` (0 = the latest) joined by the
    module's rules. Raises :class:`EventStoreUnavailable` naming the store when it cannot be read;
    ``check_cancelled`` is called between pages."""
    try:
        store_id = store.store_id
        watermark = resolve_watermark(store, up_to)
        users = _UserCodes(base.user_ids)
        columns = _Columns()
        for rows in store.read_up_to(watermark, page):
            columns.add(rows, users, base.movie_ids)
            check_cancelled()
    except (StoreUnavailable, IncompatibleStore) as exc:
        raise EventStoreUnavailable(f"the job could not read its interactions: {exc}") from exc
    codes, items, ratings, stamps = columns.joined()
    known = items >= 0
    unknown_movies = int(len(items) - known.sum())
    codes, items, ratings, stamps = codes[known], items[known], ratings[known], stamps[known]
    keys = pair_keys(codes, items, base.n_items)
    latest = _latest_per_pair(keys)
    replaced_interactions = int(len(keys) - latest.sum())
    codes, items, ratings, stamps, keys = codes[latest], items[latest], ratings[latest], stamps[latest], keys[latest]
    replaced_base = _in_sorted(np.sort(keys), pair_keys(base.users, base.items, base.n_items))
    removed = np.flatnonzero(replaced_base)
    # New users that kept an interaction, renumbered densely after the base users.
    new_ids = np.array(sorted(users.new, key=users.new.__getitem__), dtype=str)
    used_new = np.zeros(len(new_ids), dtype=bool)
    used_new[codes[codes >= users.n_base] - users.n_base] = True
    renumber = np.cumsum(used_new) - 1 + users.n_base
    new_rows = codes >= users.n_base
    codes[new_rows] = renumber[codes[new_rows] - users.n_base]
    new_ids = new_ids[used_new]
    record = InteractionsRecord(store_id=store_id, store=store.description, watermark=watermark, read=columns.read,
                                used=len(codes), replaced=replaced_interactions + len(removed),
                                unknown_movies=unknown_movies, new_users=len(new_ids))
    if not len(codes):
        return Joined(ratings=base, record=record)  # nothing added or replaced: the same ratings
    kept = ~replaced_base
    joined = dataclasses.replace(
        base,
        user_ids=np.concatenate([base.user_ids, new_ids]) if len(new_ids) else base.user_ids,
        users=np.concatenate([base.users[kept], codes.astype(np.int32)]),
        items=np.concatenate([base.items[kept], items]),
        ratings=np.concatenate([base.ratings[kept], ratings.astype(base.ratings.dtype, copy=False)]),
        timestamps=np.concatenate([base.timestamps[kept], stamps.astype(base.timestamps.dtype, copy=False)]),
        source=f"{base.source} + {record.used:,} recorded interactions from {store.description} "
               f"up to position {watermark:,}",
        fingerprint=_fingerprint(base, new_ids, removed, codes, items, ratings, stamps),
    )
    return Joined(ratings=joined, record=record)
