"""Splitting ratings into training and held-out ones: the evaluation split, and validation carved from it.

A job's metrics are measured on its held-out ratings (``make_split``; the
strategies are ``movierec.v1.vocabulary.HOLDOUTS``), and every choice a kind
makes (epochs, lambda, weights) is made on a validation split carved from
the training ratings alone (``carve_validation``), so no choice ever sees
what the metrics are measured on. Every split is deterministic for its seed.
"""

from __future__ import annotations

import numpy as np

from movierec.v1.vocabulary import HOLDOUTS, PREDEFINED_SPLITS
from trainer_service import formats
from trainer_service.data_root import MAX_FILE_BYTES
from trainer_service.errors import DatasetError
from trainer_service.formats import RatingColumns
from trainer_service.grouplens import open_copy
from trainer_service.ratings import Ratings, Split, first_repeat, lookup, pair_keys
from trainer_service.releases import ML_100K


def _per_user_holdout(users: np.ndarray, order_key: np.ndarray, size: int) -> np.ndarray:
    """Boolean mask holding out the last ``size`` ratings per user in ``order_key`` order.

    At most ``count - 1`` are held out so every user keeps a training rating.
    """
    order = np.lexsort((order_key, users))
    sorted_users = users[order]
    counts = np.bincount(sorted_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_from_end = counts[sorted_users] - (np.arange(len(order)) - starts[sorted_users])  # 1 = last
    take = np.minimum(size, counts - 1)
    mask = np.zeros(len(users), dtype=bool)
    mask[order[rank_from_end <= take[sorted_users]]] = True
    return mask


def holdout_mask(users: np.ndarray, timestamps: np.ndarray, holdout: str, size: int, seed: int) -> np.ndarray:
    """Mask of held-out positions for the "random" and "last_n_per_user" strategies."""
    if size < 1:
        raise DatasetError(f"holdout size must be >= 1, got {size}")
    if holdout == "random":
        key = np.random.default_rng(seed).random(len(users))
    elif holdout == "last_n_per_user":
        # Ties in time are broken by position so the split is deterministic
        # (the rule of ratings.time_order_key).
        key = timestamps.astype(np.float64) + np.arange(len(users)) / (len(users) + 1.0)
    else:
        raise DatasetError(f"unknown holdout {holdout!r}; expected one of {', '.join(HOLDOUTS)}")
    return _per_user_holdout(users, key, size)


def _split_positions(data: Ratings, columns: RatingColumns, pair_order: np.ndarray,
                     sorted_pairs: np.ndarray) -> np.ndarray:
    """Positions in ``data`` of each rating a GroupLens split file lists."""
    users = lookup(data.user_ids.astype(np.int64), columns.users)
    items = lookup(data.movie_ids, columns.movies)
    missing = (users < 0) | (items < 0)
    if missing.any():
        row = int(np.argmax(missing))
        raise DatasetError(f"{columns.name}:{columns.line(row)}: user {columns.users[row]} / movie "
                           f"{columns.movies[row]} is not in the loaded ratings")
    keys = pair_keys(users, items, data.n_items)
    slots = np.minimum(np.searchsorted(sorted_pairs, keys), len(sorted_pairs) - 1)
    unrated = sorted_pairs[slots] != keys
    if unrated.any():
        row = int(np.argmax(unrated))
        raise DatasetError(f"{columns.name}:{columns.line(row)}: user {columns.users[row]} never rated movie "
                           f"{columns.movies[row]} in the loaded ratings")
    positions: np.ndarray = pair_order[slots]
    return positions


def _predefined_split(data: Ratings, name: str, movielens_dir: str | None) -> Split:
    root = movielens_dir or data.grouplens_root
    if root is None:
        raise DatasetError(
            f"holdout {name!r} is a GroupLens predefined split; it needs MovieLens 100K loaded from a "
            f"GroupLens folder or ml-100k.zip, but the data came from {data.source}"
        )
    reader = open_copy(root, ML_100K, MAX_FILE_BYTES).reader
    all_keys = pair_keys(data.users, data.items, data.n_items)
    pair_order = np.argsort(all_keys)
    sorted_pairs = all_keys[pair_order]
    parts, listed = {}, []
    for suffix in ("base", "test"):
        file_name = f"{name}.{suffix}"
        if not reader.exists(file_name):
            raise DatasetError(f"predefined split {name!r}: {file_name} is missing from {reader.description}")
        columns = formats.parse_ratings(reader.read(file_name), file_name)
        positions = _split_positions(data, columns, pair_order, sorted_pairs)
        listed.append((columns, positions))
        parts[suffix] = np.sort(positions.astype(np.int64))
    both = np.concatenate([positions for _, positions in listed])
    repeat = first_repeat(both.copy)
    if repeat is not None:
        (base, base_positions), (test, _) = listed
        row, earlier = repeat

        def where(r: int) -> str:
            return (f"{base.name}:{base.line(r)}" if r < len(base_positions)
                    else f"{test.name}:{test.line(r - len(base_positions))}")

        raise DatasetError(f"{where(row)}: rating also listed in {where(earlier)}")
    return Split(data=data, train=parts["base"], test=parts["test"], name=f"{name}.base -> {name}.test")


def make_split(data: Ratings, holdout: str, holdout_size: int, seed: int, movielens_dir: str | None = None) -> Split:
    """Split ratings into train and test; see ``HOLDOUTS`` for the strategies.

    Predefined splits (ua, u1, ...) are read from the GroupLens 100K copy the
    ratings came from (``Ratings.grouplens_root``), or ``movielens_dir``.
    """
    if holdout in PREDEFINED_SPLITS:
        return _predefined_split(data, holdout, movielens_dir)
    mask = holdout_mask(data.users, data.timestamps, holdout, holdout_size, seed)
    if holdout == "random":
        name = f"random {holdout_size} per user (seed {seed})"
    else:
        name = f"last {holdout_size} per user by timestamp"
    return Split(data=data, train=np.flatnonzero(~mask), test=np.flatnonzero(mask), name=name)


def carve_validation(split: Split, size: int, seed: int, by_time: bool = False) -> Split:
    """A split of ``split``'s training ratings only, for early stopping and model selection.

    The held-out test set is never looked at, so choices made on this split do
    not leak into the reported metrics. ``by_time`` holds out each user's
    newest ``size`` training ratings instead of random ones, for kinds whose
    settings are about what comes next.
    """
    train = split.train
    holdout = "last_n_per_user" if by_time else "random"
    mask = holdout_mask(split.data.users[train], split.data.timestamps[train], holdout, size, seed)
    how = f"newest {size}" if by_time else f"random {size}"
    return Split(
        data=split.data, train=train[~mask], test=train[mask],
        name=f"validation: {how} per user of {split.name} train" + ("" if by_time else f" (seed {seed})"),
    )
