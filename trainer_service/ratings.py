"""A dataset's ratings on dense indices, and a split of them into training and held-out ratings.

Everything downstream (models, metrics, serving) works on dense integer
indices, so the raw ids are mapped once, here, and kept alongside for
translating back (:func:`build_ratings`). The checks that span the two files
(a rating of a movie the items file does not define, a (user, movie) pair
rated twice) run here too, on the arrays, and find a line number only once
they fail.

Memory matters at ML-25M's size (25 million ratings): ids are mapped with
numpy lookups and sorts rather than dictionaries, and each raw column is
dropped as soon as its dense form exists.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from movierec_common.movie_metadata import MovieMetadata
from trainer_service.errors import DatasetError
from trainer_service.formats import MovieColumns, RatingColumns


@dataclass(frozen=True)
class Ratings:
    """All ratings of one dataset, with users and items re-indexed densely."""

    user_ids: np.ndarray
    movie_ids: np.ndarray
    titles: np.ndarray
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    source: str
    fingerprint: str
    # Folder or zip of a GroupLens MovieLens 100K copy, when the data came from
    # one; predefined splits (ua, u1, ...) can only be read from there.
    grouplens_root: str | None = None
    # Genres and years aligned with movie_ids, read with the items file; None where the source has
    # none (TFDS), and the version then carries none.
    facts: MovieMetadata | None = None

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.movie_ids)

    def __len__(self) -> int:
        return len(self.users)


CSR = tuple[np.ndarray, np.ndarray]  # (indptr, items) of each user's row


def _csr(users: np.ndarray, items: np.ndarray, n_users: int) -> CSR:
    order = np.lexsort((items, users))
    counts = np.bincount(users, minlength=n_users)
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, items[order].astype(np.int32)


def time_order_key(data: Ratings, positions: np.ndarray) -> np.ndarray:
    """Sort key of ratings in time: the timestamp, ties broken by position in the file.

    MovieLens 100K rates many films within the same second, so the position
    decides their order; the same rule orders histories and the
    ``last_n_per_user`` holdout.
    """
    return data.timestamps[positions].astype(np.float64) + positions / (len(data) + 1.0)


def time_ordered_history(data: Ratings, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, items, timestamps): each user's ratings among ``positions``, oldest first."""
    positions = np.asarray(positions, dtype=np.int64)
    users = data.users[positions]
    order = np.lexsort((time_order_key(data, positions), users))
    indptr = np.zeros(data.n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=data.n_users), out=indptr[1:])
    ordered = positions[order]
    return indptr, data.items[ordered].astype(np.int32), data.timestamps[ordered].astype(np.int64)


@dataclass(frozen=True)
class Split:
    """Indices of the training and held-out ratings of one dataset."""

    data: Ratings
    train: np.ndarray  # sorted int64 indices into data's rating arrays
    test: np.ndarray
    name: str
    _cache: dict[str, CSR] = field(default_factory=dict, compare=False, repr=False)

    def train_csr(self) -> CSR:
        if "train" not in self._cache:
            self._cache["train"] = _csr(self.data.users[self.train], self.data.items[self.train], self.data.n_users)
        return self._cache["train"]

    def test_csr(self) -> CSR:
        if "test" not in self._cache:
            self._cache["test"] = _csr(self.data.users[self.test], self.data.items[self.test], self.data.n_users)
        return self._cache["test"]


# --------------------------------------------------------------------------- building dense indices


def _dense_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values and each value's int32 index among them.

    Ids that are small non-negative integers (every MovieLens release) take a
    lookup table, linear time; anything else takes a sort. The bound keeps the
    table (5 bytes per possible id) far below the ratings' own size.
    """
    if len(values) and values.min() >= 0 and values.max() < min(4 * len(values) + (1 << 20), 1 << 26):
        present = np.zeros(int(values.max()) + 1, dtype=bool)
        present[values] = True
        index = np.cumsum(present, dtype=np.int32) - 1
        return np.flatnonzero(present).astype(np.int64), index[values]
    order = np.argsort(values, kind="stable")  # timsort: fast on files grouped by user
    ordered = values[order]
    starts = np.concatenate([[True], ordered[1:] != ordered[:-1]]) if len(values) else np.zeros(0, dtype=bool)
    codes = np.empty(len(values), dtype=np.int32)
    codes[order] = np.cumsum(starts, dtype=np.int32) - 1
    return ordered[starts], codes


def lookup(keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """int32 position of each query in ``keys`` (distinct), -1 where absent."""
    if len(keys) and keys.min() >= 0 and keys.max() < 16 * len(keys) + (1 << 22):
        table = np.full(int(keys.max()) + 2, -1, dtype=np.int32)  # the last slot answers out-of-range queries
        table[keys] = np.arange(len(keys), dtype=np.int32)
        return table[np.clip(queries, -1, len(table) - 1)]
    order = np.argsort(keys)
    slots = np.minimum(np.searchsorted(keys[order], queries), len(keys) - 1)
    return np.where(keys[order][slots] == queries, order[slots], -1).astype(np.int32)


def pair_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """One int64 per (user, item) pair, equal exactly when the pairs are."""
    keys = users.astype(np.int64)
    keys *= n_items  # in place: at 25 million ratings each temporary costs 200 MB
    keys += items
    return keys


def first_repeat(make_keys: Callable[[], np.ndarray]) -> tuple[int, int] | None:
    """(row, earlier row) of the first row, in file order, whose key appeared before.

    The keys are made twice rather than kept, since the second time (with the
    sort that finds the row) only happens for a file that is being refused.
    A stable sort (timsort) merges runs, and GroupLens files list each user's
    ratings together, so it is about twice as fast here as numpy's quicksort.
    """
    ordered = make_keys()
    ordered.sort(kind="stable")
    if not (ordered[1:] == ordered[:-1]).any():
        return None
    del ordered
    keys = make_keys()
    order = np.argsort(keys, kind="stable")
    repeats = keys[order[1:]] == keys[order[:-1]]
    row = int(order[1:][repeats].min())
    return row, int(np.flatnonzero(keys == keys[row])[0])


def _id_strings(ids: np.ndarray) -> np.ndarray:
    """Ids as the shortest fixed-width strings numpy offers (users are keyed by string)."""
    texts = ids.astype(str)
    return texts.astype(f"<U{max(1, int(np.strings.str_len(texts).max(initial=1)))}")


def build_ratings(columns: RatingColumns, movies: MovieColumns, source: str, fingerprint: str,
                  grouplens_root: str | None = None) -> Ratings:
    """Dense indices for users (numeric order) and items (the items file's order), with the cross-file checks."""
    items = lookup(movies.movie_ids, columns.movies)
    unknown = items < 0
    if unknown.any():
        row = int(np.argmax(unknown))
        raise DatasetError(f"{columns.name}:{columns.line(row)}: movie id {columns.movies[row]} is not defined "
                           f"in {movies.name}")
    del unknown
    user_ids, users = _dense_codes(columns.users)
    repeat = first_repeat(lambda: pair_keys(users, items, len(movies)))
    if repeat is not None:
        row, earlier = repeat
        raise DatasetError(f"{columns.name}:{columns.line(row)}: user {columns.users[row]} already rated movie "
                           f"{columns.movies[row]} on line {columns.line(earlier)}")
    return Ratings(
        user_ids=_id_strings(user_ids),
        movie_ids=movies.movie_ids,
        titles=movies.titles,
        users=users,
        items=items,
        ratings=columns.ratings,
        timestamps=columns.timestamps,
        source=source,
        fingerprint=fingerprint,
        grouplens_root=grouplens_root,
        facts=movies.facts,
    )


def content_fingerprint(*contents: bytes) -> str:
    """sha256 over the files' bytes (each length-prefixed): equal fingerprints, the same ratings."""
    digest = hashlib.sha256()
    for content in contents:
        digest.update(len(content).to_bytes(8, "little"))
        digest.update(content)
    return digest.hexdigest()
