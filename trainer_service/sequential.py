"""The history-aware ``sequential`` kind: what someone watched last predicts what they watch next.

Two linear parts, scored together as one dot product (so serving, the
exact/approximate backends and sessions need nothing new):

* **Recency-weighted DLAE.** DLAE's item-item weights ``B`` (Steck 2020; see
  ``models.dlae_item_weights``) queried with the history row weighted by
  recency, the ``r``-th newest movie weighing ``exp(-r / decay) + floor``,
  instead of 1 for every movie ever rated (the floor keeps a user's older
  taste in the query: on MovieLens 100K it added 0.005 Recall@10 on the
  last-10 holdout and 0.02 on ua, chosen on validation either way).
* **Item-to-next-item transitions.** ``T[a, b]`` counts how often ``b``
  followed ``a`` within the next ``TRANSITION_WINDOW`` movies of a user's
  time-ordered history (the g-th next counting ``1/g``), each row divided by
  its total plus ``TRANSITION_SMOOTHING`` so that rarely-seen movies do not
  get confident rows. Queried with a steeper recency weighting, so it looks
  mostly at the last few movies.

``score = w_decay,floor(history) @ B + beta * w_transition_decay(history) @ T``,
i.e. user vector ``[w_decay,floor(h), beta * w_td(h)]`` against item vector
``[B[:, i], T[:, i]]``; ``session_query`` states the same as two history
parts, which is how serving rebuilds the query from a session.

Every setting (DLAE's lambda and dropout, decay, floor, transition decay, beta) is
chosen on a validation split carved **by time** from the training ratings
(each user's newest ``validation_size`` ratings): the question is what
comes next, so validation asks it too. That is also its limit: on a random
holdout (ua.test) the movies to find are spread over the whole history, and
the kind scores well below DLAE there (README, "Measured"). Window and smoothing were fixed once
on MovieLens 100K validation (window 3 and smoothing 20 beat 1-2 and 1-5).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from movierec_common.session_query import HISTORY, Part, QueryEncoder, recency_weights
from trainer_service import history_matrix, models
from trainer_service.evaluation import evaluate_score_rows
from trainer_service.kind_settings import RecencyRule
from trainer_service.ratings import Split, time_ordered_history

TRANSITION_WINDOW = 3
TRANSITION_SMOOTHING = 20.0
DECAYS = (3.0, 5.0, 10.0, 20.0)
FLOORS = (0.0, 0.05, 0.2)
TRANSITION_DECAYS = (1.0, 3.0)
TRANSITION_WEIGHTS = (0.5, 1.0, 2.0, 4.0)
# How long a visitor's session is taken to be when its rule is chosen on validation.
SESSION_LENGTH = 10
# Selection scores are (users x movies) float32 matrices, one per decay and
# transition decay; past this many users a fixed sample stands for them.
_SELECTION_MAX_USERS = 20_000


def weighted_history(indptr: np.ndarray, items: np.ndarray, n_items: int, decay: float,
                     users: np.ndarray | None = None, floor: float = 0.0) -> np.ndarray:
    """Dense [users, movies] rows of time-ordered histories, weighted by recency (see session_query)."""
    users = np.arange(len(indptr) - 1) if users is None else users
    matrix = np.zeros((users.size, n_items), dtype=np.float32)
    for row, user in enumerate(users.tolist()):
        history = items[indptr[user]:indptr[user + 1]]
        matrix[row, history] = recency_weights(history.size, decay, floor)
    return matrix


def transition_weights(indptr: np.ndarray, items: np.ndarray, n_items: int,
                       window: int = TRANSITION_WINDOW, smoothing: float = TRANSITION_SMOOTHING) -> np.ndarray:
    """Row-normalised counts of movie b following movie a within ``window`` steps."""
    counts = np.zeros((n_items, n_items), dtype=np.float64)
    owner = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    for gap in range(1, window + 1):
        same_user = owner[gap:] == owner[:-gap]
        np.add.at(counts, (items[:-gap][same_user], items[gap:][same_user]), 1.0 / gap)
    return (counts / (counts.sum(axis=1, keepdims=True) + smoothing)).astype(np.float32)


def fit(split: Split, l2_lambda: float, dropout: float, users: RecencyRule, visitor: RecencyRule | None = None
        ) -> tuple[np.ndarray, np.ndarray, QueryEncoder]:
    """User and item vectors and the query encoder of the kind on ``split.train``.

    ``users`` weighs a known user's history; ``visitor`` weighs visitors'
    sessions, when their rule differs from users'.
    """
    n_items = split.data.n_items
    indptr, items, _ = time_ordered_history(split.data, split.train)
    binary = history_matrix.binary_history((indptr, items), n_items)
    weights = models.dlae_item_weights(models.item_gram(binary), l2_lambda, dropout)
    del binary
    transitions = transition_weights(indptr, items, n_items)
    user_vectors = np.hstack([weighted_history(indptr, items, n_items, users.decay, floor=users.floor),
                              users.transition_weight * weighted_history(indptr, items, n_items,
                                                                         users.transition_decay)])
    item_vectors = np.hstack([weights.T, transitions.T])
    encoder = QueryEncoder(_parts(n_items, users), _parts(n_items, visitor) if visitor else None)
    return user_vectors, np.ascontiguousarray(item_vectors), encoder


def _parts(n_items: int, rule: RecencyRule) -> tuple[Part, Part]:
    return (Part(HISTORY, n_items, 1.0, rule.decay, floor=rule.floor),
            Part(HISTORY, n_items, rule.transition_weight, rule.transition_decay))


def _last(indptr: np.ndarray, items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each history cut to its newest ``n`` movies (a visitor's session), still oldest first."""
    ends = indptr[1:]
    starts = np.maximum(indptr[:-1], ends - n)
    lengths = ends - starts
    cut = np.zeros_like(indptr)
    np.cumsum(lengths, out=cut[1:])
    positions = np.repeat(starts - cut[:-1], lengths) + np.arange(cut[-1])
    return cut, items[positions]


Metrics = dict[str, float]
Rule = tuple[dict[str, float], Metrics, list[dict[str, float]]]  # (choice, its metrics, every candidate's)


def _best_rule(indptr: np.ndarray, items: np.ndarray, users: np.ndarray, weights: np.ndarray,
               transitions: np.ndarray, score: Callable[[np.ndarray], Metrics],
               cancel_point: Callable[[], None]) -> Rule:
    """The (decay, floor, transition decay, beta) whose queries of ``users``' histories score best.

    Scores are linear in beta, so each (decay, floor) and each transition
    decay cost one product and every beta is a sum.
    """
    n_items = weights.shape[0]
    transition_scores = {td: weighted_history(indptr, items, n_items, td, users) @ transitions
                         for td in TRANSITION_DECAYS}
    best: tuple[tuple[float, float], dict[str, float], Metrics] | None = None
    tried = []
    for decay in DECAYS:
        for floor in FLOORS:
            cancel_point()
            base = weighted_history(indptr, items, n_items, decay, users, floor) @ weights
            for td, extra in transition_scores.items():
                for beta in TRANSITION_WEIGHTS:
                    metrics = score(base + beta * extra)
                    choice = {"decay": decay, "floor": floor, "transition_decay": td, "transition_weight": beta}
                    tried.append({**choice, **metrics})
                    key = (metrics["recall_at_10"], metrics["ndcg_at_10"])
                    if best is None or key > best[0]:
                        best = (key, choice, metrics)
    assert best is not None  # the grids are never empty
    _, choice, metrics = best
    return choice, metrics, tried


def select(validation: Split, dlae_choice: tuple[float, float], cancel_point: Callable[[], None]) -> dict[str, Rule]:
    """Settings chosen on ``validation`` (carved by time), for users and for visitors.

    ``dlae_choice`` is DLAE's (lambda, dropout), chosen on the same split.
    The users' rule queries each validation user's whole held-in history;
    the visitors' rule queries only its newest ``SESSION_LENGTH`` movies, with
    nothing else excluded, as serving sees a visitor: a ten-movie session is
    not a whole history, and on MovieLens 100K it wants a steeper recency
    and more weight on transitions. Returns {"user": (choice, metrics, tried),
    "visitor": (...)}.
    """
    n_items = validation.data.n_items
    indptr, items, _ = time_ordered_history(validation.data, validation.train)
    test_csr = validation.test_csr()
    users = np.flatnonzero(np.diff(test_csr[0]) > 0)
    if users.size > _SELECTION_MAX_USERS:
        users = np.sort(np.random.default_rng(0).choice(users, _SELECTION_MAX_USERS, replace=False))
    binary = history_matrix.binary_history((indptr, items), n_items)
    weights = models.dlae_item_weights(models.item_gram(binary), *dlae_choice)
    del binary
    transitions = transition_weights(indptr, items, n_items)
    session_indptr, session_items = _last(indptr, items, SESSION_LENGTH)

    def scorer(train_csr: tuple[np.ndarray, np.ndarray]) -> Callable[[np.ndarray], Metrics]:
        def score(rows: np.ndarray) -> Metrics:
            found = evaluate_score_rows(rows, users, train_csr, test_csr)
            return {k: v for k, v in found.items() if k in ("recall_at_10", "ndcg_at_10", "recall_at_50")}
        return score

    return {
        "user": _best_rule(indptr, items, users, weights, transitions, scorer(validation.train_csr()),
                           cancel_point),
        "visitor": _best_rule(session_indptr, session_items, users, weights, transitions,
                              scorer((session_indptr, np.asarray(session_items, dtype=np.int32))), cancel_point),
    }
