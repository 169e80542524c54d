"""What a session query may leave out (``session_query.movies_that_count``): the rule's arithmetic, and on
real `sequential` encoders built by the trainer's own code on MovieLens 100K, that the served top 10 is the
same with and without the trimming and that no score moves by more than the stated bound."""

from __future__ import annotations

import math

import numpy as np
import pytest

from movierec_common.session_query import HISTORY, TRIM_TOLERANCE, Part, QueryEncoder, movies_that_count
from recommender_service.retrieval import Retriever
from recommender_service.sessions import TRIM_ENV
from recommender_service.top_k import BruteForce


def tail_weight(decay: float, kept: int) -> float:
    """Total weight of every movie from the kept-th newest on, the newest weighing 1 (a geometric series)."""
    return math.exp(-kept / decay) / (1.0 - math.exp(-1.0 / decay))


@pytest.mark.parametrize("decay", [0.5, 1.0, 3.0, 10.0, 40.0])
@pytest.mark.parametrize("tolerance", [TRIM_TOLERANCE, 1e-4])
def test_the_fewest_newest_movies_whose_tail_is_below_the_tolerance_are_kept(decay, tolerance):
    kept = movies_that_count(decay, 0.0, tolerance)
    assert kept is not None
    assert tail_weight(decay, kept) <= tolerance
    assert kept == 1 or tail_weight(decay, kept - 1) > tolerance  # one fewer would not do


def test_parts_with_a_floor_or_without_decay_keep_every_movie():
    assert movies_that_count(10.0, 0.05) is None  # old movies keep the floor: none can be left out
    assert movies_that_count(0.0, 0.0) is None  # every movie weighs 1
    assert movies_that_count(3.0, 0.0, 0.0) is None  # tolerance 0: the rule before trimming
    history = np.arange(100)
    assert Part(HISTORY, 100, decay=3.0).counted(history, TRIM_TOLERANCE).size == movies_that_count(3.0, 0.0)
    assert Part(HISTORY, 100, decay=3.0, floor=0.1).counted(history, TRIM_TOLERANCE).size == 100


@pytest.fixture(scope="module")
def movielens(movielens_dir):
    from trainer_service.data import load_movielens_100k
    from trainer_service.splits import make_split

    ratings, grouplens_dir = load_movielens_100k(str(movielens_dir))
    return make_split(ratings, "random", 5, 0, grouplens_dir)


# The users' and visitors' rules MovieLens 100K chooses on validation, and a steep rule from the trainer's grid
# whose both parts are trimmed (horizons 54 and 18 movies).
CHOSEN = ((10.0, 0.05, 3.0, 2.0), (10.0, 0.0, 3.0, 4.0))
STEEP = ((3.0, 0.0, 1.0, 4.0), (3.0, 0.0, 1.0, 4.0))
SESSION_USERS = 200  # of 943, each with a known user's session and a visitor's: about 1 s of CPU per rule


@pytest.mark.parametrize("rules", [CHOSEN, STEEP], ids=["chosen", "steep"])
def test_real_sequential_sessions_rank_the_same_with_and_without_trimming(movielens, rules, monkeypatch):
    from trainer_service import sequential
    from trainer_service.kind_settings import RecencyRule
    from trainer_service.pipeline import artifact_for

    users_rule, visitor_rule = (RecencyRule(*rule) for rule in rules)
    user_vectors, item_vectors, encoder = sequential.fit(movielens, 300.0, 0.5, users_rule, visitor_rule)
    art = artifact_for(movielens, user_vectors, item_vectors)
    monkeypatch.delenv(TRIM_ENV, raising=False)
    served = Retriever(art, query_encoder=encoder).sessions
    assert served is not None
    backend = BruteForce(art.item_vectors)
    items64 = np.asfortranarray(art.item_vectors, dtype=np.float64)
    bound = stated_bound(encoder, art.item_vectors)
    rng = np.random.default_rng(3)
    popularity = (art.popularity + 1.0) / (art.popularity + 1.0).sum()
    trimmed_somewhere, largest_change, reordered = 0, 0.0, 0
    users = rng.choice(art.num_users, size=SESSION_USERS, replace=False)
    for user in users.tolist():
        recent = rng.choice(art.num_items, size=10, replace=False, p=popularity)
        history = art.seen_indices[art.seen_indptr[user]:art.seen_indptr[user + 1]]
        for visitor in (False, True):
            if visitor:
                whole = encoder.encode(recent, art.item_vectors, tolerance=0.0)
                trimmed = served.for_visitor(recent)
                exclude = np.unique(recent)
            else:
                whole = encoder.encode_for_user(art.user_vectors[user], history, recent, art.item_vectors,
                                                tolerance=0.0)
                trimmed = served.for_user(user, recent)
                exclude = np.union1d(history, recent)
            trimmed_somewhere += np.count_nonzero(trimmed) < np.count_nonzero(whole)
            dropped = np.flatnonzero(trimmed != whole)  # the movies left out (trimming changes no other weight)
            change = float(np.abs(items64[:, dropped] @ whole[dropped].astype(np.float64)).max(initial=0.0))
            largest_change = max(largest_change, change)
            assert change <= bound
            answer, before = backend.top_k(trimmed, 10, exclude)[0], backend.top_k(whole, 10, exclude)[0]
            if answer.tolist() != before.tolist():
                reordered += 1
                assert_within_float_noise(answer, before, whole, items64, bound)
    assert reordered <= SESSION_USERS * 2 // 100  # nearly every answer is the very same list
    assert trimmed_somewhere > SESSION_USERS // 4  # the rule really left movies out, for many users
    assert 0.0 < largest_change <= bound


def assert_within_float_noise(answer: np.ndarray, before: np.ndarray, whole: np.ndarray, items64: np.ndarray,
                              bound: float) -> None:
    """Where the two lists differ, the movies' exact scores (untrimmed query, float64) are closer than
    float32 can tell apart: the textbook bound on a float32 dot product's error, n u sum |q_j B_ji| for n
    terms, for each of the two, plus the trimming's own bound. (Seen at MovieLens 100K: two movies 1.4
    float32 ulps apart, 1e-8, whose order the untrimmed float32 product itself gets wrong.)"""
    assert answer.size == before.size
    columns = np.flatnonzero(whole)
    weights = whole[columns].astype(np.float64)
    for mine, theirs in zip(answer.tolist(), before.tolist(), strict=True):
        if mine == theirs:
            continue
        rows = items64[[mine, theirs]][:, columns]
        exact = rows @ weights
        noise = columns.size * TRIM_TOLERANCE * (np.abs(rows) @ np.abs(weights))
        assert abs(exact[0] - exact[1]) <= noise.sum() + 2 * bound


def stated_bound(encoder: QueryEncoder, item_vectors: np.ndarray) -> float:
    """The module's bound on any score's change: per part, tolerance x its largest weight x the largest
    |entry| of its item columns, summed over the parts (for the users' rule and the visitors', the larger)."""
    bounds = []
    for parts in (encoder.parts, encoder.visitor_parts or encoder.parts):
        total, offset = 0.0, 0
        for part in parts:
            if movies_that_count(part.decay, part.floor) is not None:
                total += TRIM_TOLERANCE * part.scale * float(np.abs(item_vectors[:, offset:offset + part.width]).max())
            offset += part.width
        bounds.append(total)
    return max(bounds)
