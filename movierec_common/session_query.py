"""How a history of movies becomes a query vector: the one rule every served kind follows for sessions.

Every kind scores ``user_vector . item_vector``. A caller may send movies
the user just interacted with (``recent_movie_ids``), or be a visitor the
model has never seen; then the query must be built from a history instead of
looked up. The trainer states how, per version, as a :class:`QueryEncoder`
in ``metadata.json`` (key ``query_encoder``); serving and the quality
benchmark both call :meth:`QueryEncoder.encode`, so what is measured is
what is served.

A query is a concatenation of parts, and the item vectors are concatenated
the same way (part ``p`` occupies the same columns on both sides):

``history``
    The query is the history's indicator row over the catalogue (``width`` =
    movies), each movie weighted by its recency: the ``r``-th newest
    (``r = 0``) weighs ``exp(-r / decay) + floor``; ``decay = 0`` weighs every
    movie 1 (the floor keeps old movies from counting for nothing). This is
    exactly how EASE^R/DLAE score (history row times item-item
    weights), and with ``decay > 0`` or a transition matrix on the item side
    it is how the history-aware ``sequential`` kind scores. A known user's
    own stored vector is this same row of their history, so a history part
    for a known user with recent movies is simply the row of their history
    followed by the recent movies.

``pooled``
    The query is the recency-weighted mean of the part's own item vectors
    over the history, minus ``center``, times ``scale`` (the mean of a user's
    item vectors is the classic history encoder of two-tower retrieval, as
    in YouTube's watch-history average). ``center`` is the catalogue's mean
    item vector: a softmax over all movies cannot tell item vectors apart from
    the same vectors plus a constant, so they share a large arbitrary
    component that would otherwise dominate every mean (measured on a
    two-tower: sessions Recall@10 0.0015 without centring, 0.079 with it). ``scale`` is calibrated by the trainer so a
    pooled query is as long as a typical user vector, which matters where a
    pooled part sits next to other parts (``ease_blend``). ``fixed`` dims are
    constant in every user vector (BPR's bias dimension is 1) and are set,
    not pooled. For a known user with recent movies the part is
    ``(1 - m) * user_part + m * pooled(recent)``, where ``m`` is the recent
    movies' share of the recency weight of the whole history (the recent
    movies being its newest part).

A visitor (no stored vector) may have a rule of its own, ``visitor_parts``:
the same parts with other recency settings and scales, chosen by the trainer
for short sessions (a ten-movie session is not a whole history). Without
them a visitor's query follows ``parts`` like everyone else's.

Histories are item indices, oldest first. A movie that occurs twice counts
once, at its latest position.

What is left out of a history part
    Only movies whose weights together cannot move a score beyond float
    noise. A part with ``decay > 0`` and no floor weighs its r-th newest
    movie ``scale * exp(-r / decay)``, so everything from the K-th newest on
    weighs at most ``scale * exp(-K / decay) / (1 - exp(-1 / decay))``
    together; K (:func:`movies_that_count`) is the smallest count that puts
    this below ``TRIM_TOLERANCE`` (float32's unit roundoff, 2^-24) times
    the part's largest weight (``scale``). Every score then changes by at
    most ``TRIM_TOLERANCE * scale * M``, M the largest |entry| of the part's
    item columns: no more than one float32 rounding of a score as large as
    ``scale * M``, the contribution of the newest movie alone at its largest
    (at MovieLens 100K's `sequential`: a bound of 9e-9, 4e-9 the largest
    change seen over 1,000 sessions, against 10th-best scores of 0.04-0.2,
    spaced 4e-9 to 7e-9 apart in float32, whose float32 sums over ~150
    columns already err by 1e-8 at the median). A part with a floor never drops a movie
    (old movies keep at least ``floor``), nor one with ``decay = 0``. Why it
    matters: a history part's query is read column by column
    (``top_k.BruteForce``), so every movie kept costs a column of the item
    matrix; the `sequential` kind's transition part (decay 3) needs only a
    user's newest 54 movies, not all of them. ``tolerance=0`` keeps everything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

# Users' histories as CSR rows: (indptr, item indices); user u's items are items[indptr[u]:indptr[u + 1]].
HistoryCsr = tuple[np.ndarray, np.ndarray]

HISTORY = "history"
POOLED = "pooled"
PART_KINDS = (HISTORY, POOLED)
METADATA_KEY = "query_encoder"
# A history part leaves out its oldest movies while their weights add up to at most this share of its
# largest weight: float32's unit roundoff, so no score moves by more than one float32 rounding would move
# it (module docstring, "What is left out of a history part").
TRIM_TOLERANCE = 2.0 ** -24


class EncoderError(ValueError):
    """A query encoder description that does not fit its artifact."""


@dataclass(frozen=True)
class Part:
    kind: str
    width: int
    scale: float = 1.0
    decay: float = 0.0
    fixed: tuple[tuple[int, float], ...] = ()
    floor: float = 0.0
    center: tuple[float, ...] = ()  # pooled parts: subtracted from the mean; () = none

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "width": self.width, "scale": self.scale, "decay": self.decay,
                "floor": self.floor, "fixed": [[d, v] for d, v in self.fixed], "center": list(self.center)}

    def weights(self, n: int) -> np.ndarray:
        return recency_weights(n, self.decay, self.floor)

    def counted(self, history: np.ndarray, tolerance: float) -> np.ndarray:
        """The newest movies of ``history`` (oldest first) that can change a ranking in this part."""
        keep = movies_that_count(self.decay, self.floor, tolerance) if self.kind == HISTORY else None
        return history if keep is None or history.size <= keep else history[-keep:]


@lru_cache(maxsize=64)
def movies_that_count(decay: float, floor: float, tolerance: float = TRIM_TOLERANCE) -> int | None:
    """How many of a history part's newest movies can change a ranking; None: all of them.

    The smallest K with ``exp(-K / decay) / (1 - exp(-1 / decay)) <= tolerance``: the weights from the
    K-th newest movie on add up to at most ``tolerance`` times the newest movie's (module docstring).
    """
    if decay <= 0 or floor > 0 or tolerance <= 0:
        return None
    return max(1, math.ceil(decay * math.log(1.0 / (tolerance * -math.expm1(-1.0 / decay)))))


def recency_weights(n: int, decay: float, floor: float = 0.0) -> np.ndarray:
    """Weights of a history of ``n`` movies, oldest first: the r-th newest weighs exp(-r / decay) + floor.

    Read-only and shared: each call of a session computes the same few short arrays (lengths of the
    histories served, a few per part), so they are kept rather than recomputed.
    """
    return _recency_weights(int(n), float(decay), float(floor))


@lru_cache(maxsize=1024)
def _recency_weights(n: int, decay: float, floor: float) -> np.ndarray:
    if decay <= 0:
        weights = np.ones(n, dtype=np.float32)
    else:
        weights = (np.exp(-(np.arange(n, dtype=np.float64)[::-1]) / decay) + floor).astype(np.float32)
    weights.flags.writeable = False
    return weights


def merge_history(history: np.ndarray, recent: np.ndarray) -> np.ndarray:
    """``history`` followed by ``recent``, each movie once at its latest position (oldest first)."""
    combined = np.concatenate([np.asarray(history, dtype=np.int64), np.asarray(recent, dtype=np.int64)])
    return latest_occurrences(combined)


# Up to this many movies, latest_occurrences works on a Python list: a 10-movie session costs 0.4 us there
# against 4 us for np.unique's fixed cost; from about a hundred on, np.unique is as fast or faster.
_SHORT_HISTORY = 64


def latest_occurrences(items: np.ndarray) -> np.ndarray:
    """Each movie once, at its latest position, order otherwise kept."""
    items = np.asarray(items, dtype=np.int64)
    if items.size < 2:
        return items
    if items.size <= _SHORT_HISTORY:
        listed = items.tolist()
        if len(set(listed)) == len(listed):
            return items
        kept = list(dict.fromkeys(reversed(listed)))  # first seen from the end: each movie's latest position
        kept.reverse()
        return np.array(kept, dtype=np.int64)
    reversed_items = items[::-1]
    _, first_in_reversed = np.unique(reversed_items, return_index=True)
    keep = np.sort(items.size - 1 - first_in_reversed)
    return items[keep]


@dataclass(frozen=True)
class QueryEncoder:
    parts: tuple[Part, ...]
    visitor_parts: tuple[Part, ...] | None = None

    @property
    def width(self) -> int:
        return sum(part.width for part in self.parts)

    @property
    def has_history_part(self) -> bool:
        return any(part.kind == HISTORY for part in self.parts)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"parts": [part.to_json() for part in self.parts]}
        if self.visitor_parts is not None:
            data["visitor_parts"] = [part.to_json() for part in self.visitor_parts]
        return data

    @classmethod
    def from_json(cls, data: Any, num_items: int, dim: int) -> QueryEncoder:
        """Reads and checks a description against the artifact it came with; EncoderError says what is wrong."""
        if not isinstance(data, dict) or not isinstance(data.get("parts"), list) or not data["parts"]:
            raise EncoderError(f"{METADATA_KEY} must be an object with a non-empty list of parts")
        parts = cls._parts_from_json(data["parts"], num_items, "part")
        visitor_parts = None
        if data.get("visitor_parts") is not None:
            if not isinstance(data["visitor_parts"], list):
                raise EncoderError(f"{METADATA_KEY} visitor_parts must be a list of parts")
            visitor_parts = cls._parts_from_json(data["visitor_parts"], num_items, "visitor part")
            if [(p.kind, p.width) for p in visitor_parts] != [(p.kind, p.width) for p in parts]:
                raise EncoderError(f"{METADATA_KEY} visitor_parts must have the kinds and widths of parts")
        encoder = cls(parts, visitor_parts)
        if encoder.width != dim:
            raise EncoderError(f"{METADATA_KEY} parts add up to width {encoder.width}, "
                               f"but the model's vectors have {dim} dimensions")
        return encoder

    @staticmethod
    def _parts_from_json(raw_parts: list[Any], num_items: int, name: str) -> tuple[Part, ...]:
        parts = []
        for position, raw in enumerate(raw_parts):
            try:
                fixed = tuple((int(d), float(v)) for d, v in raw.get("fixed", []))
                center = tuple(float(v) for v in raw.get("center", []))
                part = Part(kind=str(raw["kind"]), width=int(raw["width"]), scale=float(raw.get("scale", 1.0)),
                            decay=float(raw.get("decay", 0.0)), fixed=fixed, floor=float(raw.get("floor", 0.0)),
                            center=center)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise EncoderError(f"{METADATA_KEY} {name} {position} is malformed: {exc}") from None
            if part.kind not in PART_KINDS:
                raise EncoderError(f"{METADATA_KEY} {name} {position} has unknown kind {part.kind!r}")
            if part.kind == HISTORY and part.width != num_items:
                raise EncoderError(f"{METADATA_KEY} {name} {position} is a history part of width {part.width}, "
                                   f"but the catalogue has {num_items} movies")
            if not (np.isfinite(part.scale) and np.isfinite(part.decay) and part.decay >= 0 and part.width > 0
                    and np.isfinite(part.floor) and part.floor >= 0):
                raise EncoderError(f"{METADATA_KEY} {name} {position} needs a positive width, a finite scale "
                                   f"and a decay and floor >= 0")
            if part.center and (len(part.center) != part.width or not np.all(np.isfinite(part.center))):
                raise EncoderError(f"{METADATA_KEY} {name} {position} has a center of {len(part.center)} finite "
                                   f"values or fewer, not {part.width}")
            if any(not 0 <= d < part.width or not np.isfinite(v) for d, v in part.fixed):
                raise EncoderError(f"{METADATA_KEY} {name} {position} fixes a dimension outside its width")
            parts.append(part)
        return tuple(parts)

    def encode(self, history: np.ndarray, item_vectors: np.ndarray, visitor: bool = True,
               tolerance: float = TRIM_TOLERANCE) -> np.ndarray:
        """The query of someone whose whole history is ``history`` (item indices, oldest first):
        a visitor's (``visitor_parts`` when there are any), or with ``visitor=False`` a stored user's.
        ``tolerance``: what a history part may leave out (TRIM_TOLERANCE; 0 keeps every movie)."""
        history = latest_occurrences(history)
        query = np.zeros(self.width, dtype=np.float32)
        offset = 0
        parts = self.visitor_parts if visitor and self.visitor_parts is not None else self.parts
        for part in parts:
            if part.kind == HISTORY:
                counted = part.counted(history, tolerance)
                query[offset + counted] = part.scale * part.weights(counted.size)
            else:
                weights = part.weights(history.size)
                query[offset:offset + part.width] = self._pooled(part, offset, history, weights, item_vectors)
            offset += part.width
        return query

    def encode_for_user(self, user_vector: np.ndarray, history: np.ndarray, recent: np.ndarray,
                        item_vectors: np.ndarray, tolerance: float = TRIM_TOLERANCE) -> np.ndarray:
        """The query of a known user (stored vector, own history oldest first) who just saw ``recent``
        (``tolerance`` as in :meth:`encode`)."""
        recent = latest_occurrences(recent)
        if recent.size == 0:
            return np.asarray(user_vector, dtype=np.float32)
        combined = merge_history(history, recent)
        query = np.empty(self.width, dtype=np.float32)
        offset = 0
        for part in self.parts:
            columns = slice(offset, offset + part.width)
            if part.kind == HISTORY:
                query[columns] = 0.0
                counted = part.counted(combined, tolerance)
                query[offset + counted] = part.scale * part.weights(counted.size)
            else:
                weights = part.weights(combined.size)
                share = float(weights[-recent.size:].sum() / weights.sum())
                pooled = self._pooled(part, offset, recent, part.weights(recent.size), item_vectors)
                query[columns] = (1.0 - share) * user_vector[columns] + share * pooled
                for dim, value in part.fixed:
                    query[offset + dim] = value
            offset += part.width
        return query

    @staticmethod
    def _pooled(part: Part, offset: int, history: np.ndarray, weights: np.ndarray,
                item_vectors: np.ndarray) -> np.ndarray:
        if history.size == 0:
            pooled = np.zeros(part.width, dtype=np.float32)
        else:
            rows = item_vectors[history, offset:offset + part.width]
            mean = (weights @ rows) / weights.sum()
            if part.center:
                mean = mean - np.asarray(part.center, dtype=np.float32)
            pooled = (part.scale * mean).astype(np.float32)
        for dim, value in part.fixed:
            pooled[dim] = value
        return pooled


def pooled_encoder(user_vectors: np.ndarray, item_vectors: np.ndarray, history_csr: HistoryCsr,
                   fixed: tuple[tuple[int, float], ...] = ()) -> QueryEncoder:
    """A factorisation model's rule: the centred mean of the history's item vectors, scaled to a
    typical user vector (``fixed``: dims constant in every user vector, as BPR's bias)."""
    center = item_vectors.astype(np.float64).mean(axis=0)
    for dim, _ in fixed:
        center[dim] = 0.0
    scale = pooled_scale(user_vectors, item_vectors, history_csr, [d for d, _ in fixed], center)
    return QueryEncoder((Part(POOLED, int(user_vectors.shape[1]), scale, 0.0, tuple(fixed),
                              center=tuple(float(c) for c in center)),))


def history_encoder(num_items: int, scale: float = 1.0, decay: float = 0.0) -> QueryEncoder:
    """EASE^R and DLAE: the query is the (binary) history row."""
    return QueryEncoder((Part(HISTORY, num_items, scale, decay),))


# Users whose vectors calibrate a pooled part's scale; a median over more moves little.
_CALIBRATION_USERS = 2_000


def pooled_scale(user_part: np.ndarray, item_part: np.ndarray, history_csr: HistoryCsr,
                 fixed_dims: Sequence[int] = (), center: np.ndarray | None = None) -> float:
    """The scale that makes a pooled query as long as a typical stored user vector.

    The median, over up to 2,000 users with a history (a fixed sample), of
    ``|user part| / |mean of the item part over their history|``, leaving
    fixed dims out, after subtracting ``center``; 1 when it cannot be told.
    """
    indptr, items = history_csr
    free = np.setdiff1d(np.arange(user_part.shape[1]), np.asarray(fixed_dims, dtype=np.int64))
    counts = np.diff(indptr)
    users = np.flatnonzero(counts > 0)
    if users.size > _CALIBRATION_USERS:
        users = np.sort(np.random.default_rng(0).choice(users, _CALIBRATION_USERS, replace=False))
    if users.size == 0 or free.size == 0:
        return 1.0
    positions = np.concatenate([np.arange(indptr[u], indptr[u + 1]) for u in users])
    starts = np.concatenate([[0], np.cumsum(counts[users])[:-1]])
    sums = np.add.reduceat(item_part[items[positions]][:, free].astype(np.float64), starts, axis=0)
    means = sums / counts[users][:, None]
    if center is not None:
        means -= np.asarray(center, dtype=np.float64)[free]
    pooled_norms = np.linalg.norm(means, axis=1)
    user_norms = np.linalg.norm(user_part[users][:, free].astype(np.float64), axis=1)
    usable = pooled_norms > 1e-12
    if not usable.any():
        return 1.0
    ratio = float(np.median(user_norms[usable] / pooled_norms[usable]))
    return ratio if np.isfinite(ratio) and ratio > 0 else 1.0
