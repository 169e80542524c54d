"""Sessions: turning the movies a caller just saw into a query for one model version.

A Recommend call may carry ``recent_movie_ids``. Scoring still is
``query . item_vector`` with the version's TopK backend; only the query
changes. How a history becomes a query is the version's own
:class:`~movierec_common.session_query.QueryEncoder`, written by the trainer
into ``metadata.json``, so serving follows exactly the rule the quality
benchmark measured. This module supplies the histories: a visitor's is the
recent movies alone; a known user's is their stored history (time order,
oldest first) with the recent movies as its newest part.

Nothing here needs TensorFlow: everything is numpy on arrays already loaded.
A version without an encoder refuses sessions with
``recommender_service.errors.SessionsUnsupported``.

History parts leave out the old movies whose weights cannot move a score
beyond float noise (``session_query.TRIM_TOLERANCE``). Setting
``MOVIEREC_SESSION_TRIM=0`` in a server's environment keeps every movie: it
exists so that ``benchmarks/serve.py --session-compare`` can serve the old
rule beside the new one in the same run, and is not a setting to tune.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from movierec_common.session_query import TRIM_TOLERANCE, QueryEncoder

# "0": history parts keep every movie (the rule before trimming), for side-by-side benchmarks only.
TRIM_ENV = "MOVIEREC_SESSION_TRIM"


def trim_tolerance() -> float:
    """What a history part may leave out in this process: TRIM_TOLERANCE, or 0 when TRIM_ENV is "0"."""
    return 0.0 if os.environ.get(TRIM_ENV, "").strip() == "0" else TRIM_TOLERANCE


def first_occurrences(ids: np.ndarray) -> list[int]:
    """Each id once, in the order first seen (how unknown ids are reported back)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size < 2:
        return ids.tolist()
    _, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)].tolist()


class ReconstructedRows:
    """Item vectors a backend keeps only inside its index, readable as ``rows[indices, columns]``.

    A pooled query part averages the item vectors of the history; with an
    index backend there is no item matrix in this process, so the few rows a
    session needs are reconstructed from the index instead.
    """

    def __init__(self, vectors: Callable[[np.ndarray], np.ndarray]):
        self._vectors = vectors

    def __getitem__(self, key: tuple[Any, Any]) -> np.ndarray:
        rows, columns = key
        return self._vectors(np.asarray(rows, dtype=np.int64))[:, columns]


class SessionQueries:
    """A version's query encoder bound to the arrays it reads: user vectors,
    time-ordered histories (CSR) and the item rows."""

    def __init__(self, encoder: QueryEncoder, user_vectors: np.ndarray, history_indptr: np.ndarray,
                 history_indices: np.ndarray, item_rows: Any):
        self.encoder = encoder
        self._user_vectors = user_vectors
        self._history_indptr = history_indptr
        self._history_indices = history_indices
        self._item_rows = item_rows
        self._tolerance = trim_tolerance()

    def history(self, user_index: int) -> np.ndarray:
        """The user's stored history, item indices, oldest first."""
        return self._history_indices[self._history_indptr[user_index]:self._history_indptr[user_index + 1]]

    def for_visitor(self, recent: np.ndarray) -> np.ndarray:
        """The query of someone the model has no vector for: the recent movies are their whole history."""
        return self.encoder.encode(recent, self._item_rows, tolerance=self._tolerance)

    def for_user(self, user_index: int, recent: np.ndarray) -> np.ndarray:
        """The query of a known user whose newest movies are ``recent``."""
        return self.encoder.encode_for_user(self._user_vectors[user_index], self.history(user_index), recent,
                                            self._item_rows, tolerance=self._tolerance)
