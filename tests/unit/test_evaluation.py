"""Ranking metrics against a hand-computed example and the calibrated popularity figures."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from trainer_service.data import load_movielens_100k
from trainer_service.evaluation import evaluate_scores, popularity_vectors
from trainer_service.splits import make_split


def csr(lists):
    indptr = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
    items = np.asarray([i for x in lists for i in x], dtype=np.int32)
    return indptr, items


def test_hand_computed_example():
    users = np.ones((3, 1), dtype=np.float32)
    items = np.asarray([[5], [4], [3], [2], [1]], dtype=np.float32)
    train = csr([[0], [], [2]])
    test = csr([[1, 3], [4], []])  # user 2 has no test items and is not averaged
    metrics = evaluate_scores(users, items, train, test, ks=(2,))
    # user 0: item 0 is seen, ranking 1,2,3,4 -> top-2 [1, 2], one hit of two.
    # user 1: ranking 0,1,... -> top-2 [0, 1], no hit.
    ndcg_user0 = 1.0 / (1.0 + 1.0 / math.log2(3))
    assert metrics["recall_at_2"] == pytest.approx((0.5 + 0.0) / 2)
    assert metrics["precision_at_2"] == pytest.approx((0.5 + 0.0) / 2)
    assert metrics["ndcg_at_2"] == pytest.approx(ndcg_user0 / 2)
    assert metrics["users_evaluated"] == 2


def test_seen_items_are_excluded_and_ties_go_to_the_lower_index():
    users = np.ones((1, 1), dtype=np.float32)
    items = np.asarray([[9], [1], [1], [1]], dtype=np.float32)
    # Without exclusion item 0 would take the first slot; with it, item 1 wins the tie.
    metrics = evaluate_scores(users, items, csr([[0]]), csr([[1]]), ks=(1,))
    assert metrics["recall_at_1"] == 1.0 and metrics["ndcg_at_1"] == 1.0
    metrics = evaluate_scores(users, items, csr([[0]]), csr([[3]]), ks=(1, 3))
    assert metrics["recall_at_1"] == 0.0
    assert metrics["recall_at_3"] == 1.0
    assert metrics["ndcg_at_3"] == pytest.approx(1.0 / math.log2(4))


def test_ndcg_ideal_uses_at_most_k_relevant_items():
    users = np.ones((1, 1), dtype=np.float32)
    items = np.arange(10, 0, -1, dtype=np.float32)[:, None]
    metrics = evaluate_scores(users, items, csr([[]]), csr([[0, 1, 5, 6, 7]]), ks=(2,))
    assert metrics["ndcg_at_2"] == pytest.approx(1.0)
    assert metrics["recall_at_2"] == pytest.approx(2 / 5)


def test_popularity_on_ua_matches_the_calibrated_protocol(movielens_dir):
    data, _ = load_movielens_100k(str(movielens_dir))
    split = make_split(data, "ua", 0, seed=0)
    user_vectors, item_vectors = popularity_vectors(split.train_csr(), data.n_items)
    started = time.monotonic()
    metrics = evaluate_scores(user_vectors, item_vectors, split.train_csr(), split.test_csr())
    assert time.monotonic() - started < 1.0
    assert round(metrics["recall_at_10"], 4) == 0.1215
    assert round(metrics["ndcg_at_10"], 4) == 0.1331
    assert metrics["users_evaluated"] == 943
    assert metrics["recall_at_50"] > metrics["recall_at_10"]
    # Random scores land near 10 / ~1600 candidate items.
    random_vectors = np.random.default_rng(0).random((data.n_items, 1)).astype(np.float32)
    random_users = np.random.default_rng(1).standard_normal((data.n_users, 1)).astype(np.float32)
    chance = evaluate_scores(random_users, random_vectors, split.train_csr(), split.test_csr())
    assert chance["recall_at_10"] < 0.03


@pytest.mark.parametrize("scores", ["untied", "tied"])
def test_partial_sort_path_agrees_with_the_full_sort(monkeypatch, scores):
    """Past FULL_SORT_MAX_ITEMS a partial sort ranks; it must give the full stable sort's metrics, also when
    many movies tie (as popularity's counts do), so that which tied movie is in the top k follows the rule."""
    from trainer_service import evaluation

    rng = np.random.default_rng(3)
    if scores == "untied":
        users = rng.standard_normal((40, 8)).astype(np.float32)
        items = rng.standard_normal((3000, 8)).astype(np.float32)
    else:  # small whole-number scores: hundreds of movies tie at every value, the k-th place included
        users = np.ones((40, 1), dtype=np.float32)
        items = rng.integers(0, 12, (3000, 1)).astype(np.float32)
    train = csr([sorted(rng.choice(3000, 20, replace=False).tolist()) for _ in range(40)])
    # Held out among the best-scored movies, so a hit depends on which of them make the top 50.
    best = np.argsort(-(users[0] @ items.T), kind="stable")[:400]
    test = csr([sorted(rng.choice(best, 5, replace=False).tolist()) for _ in range(40)])
    full = evaluate_scores(users, items, train, test)
    monkeypatch.setattr(evaluation, "FULL_SORT_MAX_ITEMS", 100)
    monkeypatch.setattr(evaluation, "CHUNK_SCORES", 3000 * 7)  # several chunks, one not full
    partial = evaluate_scores(users, items, train, test)
    assert partial == pytest.approx(full)
    assert full["recall_at_50"] > 0
    every = users @ items.T
    every[:, ::7] = -np.inf  # seen movies, as evaluation marks them
    assert np.array_equal(evaluation._top_items(every, 50), np.argsort(-every, axis=1, kind="stable")[:, :50])


def _rows(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if kind == "normal":
        return rng.standard_normal((7, n)).astype(np.float32)
    if kind == "few values":  # ties everywhere, the threshold's and the k-th place's included
        return rng.integers(0, 4, (7, n)).astype(np.float32)
    if kind == "mostly zero":  # as neighbourhood scores: a few positive, zeros (and -0.0) tied behind them
        rows = np.zeros((7, n), dtype=np.float32)
        rows[:, rng.choice(n, 30)] = rng.random(30, dtype=np.float32)
        rows[:, 1::9] = -0.0
        return rows
    if kind == "all equal":
        return np.full((7, n), 2.5, dtype=np.float32)
    rows = rng.standard_normal((7, n)).astype(np.float32)  # "mostly seen": few finite scores, -inf behind
    rows[:, rng.random(n) < 0.995] = -np.inf
    return rows


@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # the neighbourhood baseline scores in float64
@pytest.mark.parametrize("kind", ["normal", "few values", "mostly zero", "all equal", "mostly seen"])
@pytest.mark.parametrize("k", [1, 10, 50, 299])
def test_top_items_past_the_full_sort_keeps_the_stable_sorts_order(monkeypatch, kind, k, dtype):
    from trainer_service import evaluation

    monkeypatch.setattr(evaluation, "FULL_SORT_MAX_ITEMS", 100)
    scores = _rows(kind, np.random.default_rng(k), 20_000).astype(dtype)
    scores[:, 5::13] = -np.inf  # seen movies, as evaluation marks them
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    assert np.array_equal(evaluation._top_items(scores, k), expected)


def test_a_score_budget_evaluates_a_fixed_sample_of_users():
    rng = np.random.default_rng(4)
    users = rng.standard_normal((200, 4)).astype(np.float32)
    items = rng.standard_normal((100, 4)).astype(np.float32)
    train = csr([[u % 100] for u in range(200)])
    test = csr([[(u + 1) % 100] for u in range(200)])
    capped = evaluate_scores(users, items, train, test, max_scores=50 * 100)
    assert capped["users_evaluated"] == 50
    assert evaluate_scores(users, items, train, test, max_scores=50 * 100) == capped  # the sample is fixed
    assert evaluate_scores(users, items, train, test)["users_evaluated"] == 200
