"""An independent reference for how a session becomes a query, written from the documented rules
(README "### Sessions" and the ``movierec_common.session_query`` module docstring), not from its code.

Tests compare the served answers, and ``QueryEncoder`` itself, against this. It reads the encoder's
JSON description (what the trainer writes into ``metadata.json``) with plain dict access and works
movie by movie in float64, so a slip in the encoder's vectorised numpy cannot be copied here:

- a history is item indices, oldest first; a movie listed twice counts once, at its latest position;
- the r-th newest movie (r = 0) weighs ``exp(-r / decay) + floor``; ``decay = 0`` weighs every movie 1;
- a ``history`` part is the catalogue-wide row with each history movie at ``scale`` x its weight;
- a ``pooled`` part is the weighted mean of the part's item vectors over the history, minus ``center``,
  times ``scale``, with ``fixed`` dims set to their values (zero vector for an empty history);
- a visitor follows ``visitor_parts`` when there are any, else ``parts``;
- a known user with recent movies: the history part is the row of their history followed by the recent
  movies; a pooled part is ``(1 - m) * user_part + m * pooled(recent)``, where ``m`` is the recent movies'
  share of the whole (merged) history's recency weight and ``pooled(recent)`` weighs the recent movies by
  their own recency; fixed dims stay set. Without recent movies a known user's query is the stored vector.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def once_at_latest(items) -> list[int]:
    """Each movie once, at its latest position, oldest first."""
    kept: list[int] = []
    for item in reversed([int(i) for i in items]):
        if item not in kept:
            kept.append(item)
    return kept[::-1]


def weight_of(newest_rank: int, part: dict[str, Any]) -> float:
    decay = float(part.get("decay", 0.0))
    if decay <= 0:
        return 1.0
    return math.exp(-newest_rank / decay) + float(part.get("floor", 0.0))


def weights_of(history: list[int], part: dict[str, Any]) -> list[float]:
    """Weights of ``history`` (oldest first): the last movie is newest rank 0."""
    n = len(history)
    return [weight_of(n - 1 - position, part) for position in range(n)]


def pooled(part: dict[str, Any], offset: int, history: list[int], item_vectors: np.ndarray) -> np.ndarray:
    width = int(part["width"])
    out = np.zeros(width)
    if history:
        weights = weights_of(history, part)
        for weight, item in zip(weights, history, strict=True):
            out += weight * item_vectors[item, offset:offset + width].astype(np.float64)
        out /= sum(weights)
        center = part.get("center") or []
        for dim, value in enumerate(center):
            out[dim] -= float(value)
        out *= float(part.get("scale", 1.0))
    for dim, value in part.get("fixed", []):
        out[int(dim)] = float(value)
    return out


def history_row(part: dict[str, Any], history: list[int]) -> np.ndarray:
    row = np.zeros(int(part["width"]))
    for weight, item in zip(weights_of(history, part), history, strict=True):
        row[item] = float(part.get("scale", 1.0)) * weight
    return row


def visitor_query(description: dict[str, Any], recent, item_vectors: np.ndarray) -> np.ndarray:
    """The query of someone with no stored vector whose whole history is ``recent``."""
    return query_of(description.get("visitor_parts") or description["parts"], recent, item_vectors)


def query_of(parts: list[dict[str, Any]], history, item_vectors: np.ndarray) -> np.ndarray:
    """``parts`` applied to a whole history (a stored user's vector is their ``parts`` over their history)."""
    history = once_at_latest(history)
    pieces, offset = [], 0
    for part in parts:
        pieces.append(history_row(part, history) if part["kind"] == "history"
                      else pooled(part, offset, history, item_vectors))
        offset += int(part["width"])
    return np.concatenate(pieces)


def known_user_query(description: dict[str, Any], user_vector: np.ndarray, history, recent,
                     item_vectors: np.ndarray) -> np.ndarray:
    """The query of a known user (stored vector, own history oldest first) who just saw ``recent``."""
    recent_once = once_at_latest(recent)
    if not recent_once:
        return np.asarray(user_vector, dtype=np.float64)
    merged = once_at_latest([*[int(i) for i in history], *recent_once])
    pieces, offset = [], 0
    for part in description["parts"]:
        width = int(part["width"])
        if part["kind"] == "history":
            pieces.append(history_row(part, merged))
        else:
            weights = weights_of(merged, part)
            share = sum(weights[-len(recent_once):]) / sum(weights)
            own = np.asarray(user_vector[offset:offset + width], dtype=np.float64)
            piece = (1 - share) * own + share * pooled(part, offset, recent_once, item_vectors)
            for dim, value in part.get("fixed", []):
                piece[int(dim)] = float(value)
            pieces.append(piece)
        offset += width
    return np.concatenate(pieces)


def best(scores: np.ndarray, exclude, k: int) -> list[int]:
    """Indices of the k best scores, ties to the lower index, ``exclude`` left out (a plain sort)."""
    left_out = {int(i) for i in exclude}
    order = sorted((i for i in range(len(scores)) if i not in left_out), key=lambda i: (-float(scores[i]), i))
    return order[:k]
