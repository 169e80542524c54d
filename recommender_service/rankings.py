"""Rankings precomputed per user when a version is loaded.

Each ranked user's best :data:`PRECOMPUTED_TOP` unseen movies are computed
once per version, in the loader process and in batches (:meth:`TopK.top_k_batch`),
so the common Recommend call is a table lookup instead of a scan. The same
backend and the same tie rule answer the calls the table cannot (larger k,
seen movies included, users past the budget), so both paths agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recommender_service.catalogue import ServingCatalogue
from recommender_service.top_k import NO_ITEMS, TopK

PRECOMPUTED_TOP = 100
# Rankings cover as many users as fit in this budget (~808 bytes a user at
# top 100: about 330,000 users); the most active users first, the rest are
# answered live.
RANKING_BUDGET_BYTES = 256 * 1024 * 1024
# An exact backend pays a full scan per ranked user, so it also stops at this
# many user x movie scores (at most ~10 s of loader time; MovieLens 1M is 22 M).
EXACT_RANKING_MAX_SCORES = 500_000_000


@dataclass(frozen=True)
class Rankings:
    """Per-user top movies, computed when a version is loaded."""

    top: int
    rows: np.ndarray      # [U] int32: the user's row, or -1 (answered live)
    indices: np.ndarray   # [R, top] int32
    scores: np.ndarray    # [R, top] float32
    counts: np.ndarray    # [R] int32: valid entries (fewer when fewer unseen movies exist)

    @property
    def num_users(self) -> int:
        return int(self.counts.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in (self.rows, self.indices, self.scores, self.counts))

    @staticmethod
    def bytes_per_user(top: int) -> int:
        return top * 8 + 8

    @classmethod
    def users_to_rank(cls, catalogue: ServingCatalogue, budget_bytes: int, top: int, exact: bool) -> np.ndarray:
        """The users a budget ranks, ascending: all of them, or the most active first (stable on ties).

        A smaller budget's users are always a prefix by activity of a larger one's, which is what lets a
        recommender take its share of rankings shipped for a larger budget (:meth:`restricted_to`).
        """
        users, items = catalogue.num_users, catalogue.num_items
        ranked = min(users, max(0, budget_bytes) // cls.bytes_per_user(top))
        if exact:
            ranked = min(ranked, EXACT_RANKING_MAX_SCORES // max(items, 1))
        if ranked >= users:
            return np.arange(users)
        activity = np.diff(catalogue.seen_indptr)  # the most active users are the likeliest callers
        return np.sort(np.argsort(-activity, kind="stable")[:ranked])

    @classmethod
    def compute(cls, catalogue: ServingCatalogue, top_k: TopK, budget_bytes: int = RANKING_BUDGET_BYTES,
                top: int = PRECOMPUTED_TOP) -> Rankings:
        top = min(top, catalogue.num_items)
        chosen = cls.users_to_rank(catalogue, budget_bytes, top, top_k.exact)
        if chosen.size == 0:
            return cls.of_users(catalogue.num_users, top, chosen, np.zeros((0, top), np.int32),
                                np.zeros((0, top), np.float32), np.zeros(0, np.int32))
        starts, ends = catalogue.seen_indptr[chosen], catalogue.seen_indptr[chosen + 1]
        indptr = np.zeros(chosen.size + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=indptr[1:])
        pieces = [catalogue.seen_indices[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
        seen = np.concatenate(pieces) if indptr[-1] else NO_ITEMS
        indices, scores, counts = top_k.top_k_batch(catalogue.user_vectors[chosen], top, indptr, seen)
        return cls.of_users(catalogue.num_users, top, chosen, indices, scores, counts)

    @classmethod
    def of_users(cls, num_users: int, top: int, users: np.ndarray, indices: np.ndarray, scores: np.ndarray,
                 counts: np.ndarray) -> Rankings:
        """Rankings whose row r belongs to ``users[r]`` (ascending user indices)."""
        rows = np.full(num_users, -1, dtype=np.int32)
        rows[users] = np.arange(users.size, dtype=np.int32)
        return cls(top, rows, indices, scores, counts)

    @property
    def users(self) -> np.ndarray:
        """The ranked users, ascending (row r is users[r]'s)."""
        return np.flatnonzero(self.rows >= 0)

    def restricted_to(self, users: np.ndarray) -> Rankings | None:
        """The rows of ``users`` (ascending) alone, or None when one of them has no row here."""
        if users.size == self.num_users and np.array_equal(users, self.users):
            return self
        rows = self.rows[users]
        if (rows < 0).any():
            return None
        return self.of_users(self.rows.size, self.top, users, self.indices[rows], self.scores[rows],
                             self.counts[rows])
