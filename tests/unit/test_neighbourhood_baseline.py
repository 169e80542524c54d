"""The neighbourhood-popularity baseline against a brute-force count, on both of its paths."""

from __future__ import annotations

import numpy as np
import pytest

from trainer_service import neighbourhood_baseline
from trainer_service.evaluation import evaluate_scores, popularity_vectors
from trainer_service.neighbourhood_baseline import CoRaters, evaluate_neighbourhood_popularity, sample_within_work


def _csr(histories: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.cumsum([0] + [len(h) for h in histories]).astype(np.int64)
    items = np.array([i for h in histories for i in h], dtype=np.int64)
    return indptr, items


def _brute_force(histories: list[list[int]], user: int, n_items: int) -> np.ndarray:
    """For each movie, how many (movie of the user, other user) pairs also hold it: loops over sets."""
    scores = np.zeros(n_items)
    for mine in histories[user]:
        for other in histories:
            if mine in other:
                for movie in other:
                    scores[movie] += 1
    return scores


@pytest.fixture
def histories() -> list[list[int]]:
    rng = np.random.default_rng(3)
    return [sorted(rng.choice(40, size=int(rng.integers(1, 12)), replace=False).tolist()) for _ in range(30)]


@pytest.mark.parametrize("dense", [True, False])
def test_scores_are_the_co_occurrence_counts(histories, dense, monkeypatch):
    if not dense:
        monkeypatch.setattr(neighbourhood_baseline, "DENSE_MAX_ENTRIES", 0)
    co_raters = CoRaters(_csr(histories), 40)
    assert (co_raters.dense is not None) is dense
    users = np.array([0, 7, 29])
    scores = co_raters.scores(users)
    for row, user in enumerate(users):
        np.testing.assert_allclose(scores[row], _brute_force(histories, int(user), 40))


def test_subsampled_counts_are_unbiased(histories, monkeypatch):
    """Raters and voters' movies cut to 2 each: over many seeds the mean score is the exact count."""
    monkeypatch.setattr(neighbourhood_baseline, "DENSE_MAX_ENTRIES", 0)
    monkeypatch.setattr(neighbourhood_baseline, "MAX_CO_RATERS", 2)
    monkeypatch.setattr(neighbourhood_baseline, "MAX_VOTER_MOVIES", 2)
    users = np.array([3, 11])
    exact = np.array([_brute_force(histories, int(u), 40) for u in users])
    runs = []
    for seed in range(150):
        monkeypatch.setattr(neighbourhood_baseline, "_SAMPLE_SEED", seed)
        co_raters = CoRaters(_csr(histories), 40)
        assert np.diff(co_raters.raters_indptr).max() == 2 and np.diff(co_raters.votes_indptr).max() == 2
        runs.append(co_raters.scores(users))
    mean, standard_error = np.mean(runs, axis=0), np.std(runs, axis=0) / np.sqrt(len(runs))
    assert not np.allclose(runs[0], exact)  # one run is an estimate ...
    assert np.all(np.abs(mean - exact) <= 4.5 * standard_error + 1e-9)  # ... whose mean is the count
    np.testing.assert_allclose(mean.sum(axis=1), exact.sum(axis=1), rtol=0.02)


def test_the_user_sample_stays_within_the_work_budget(histories, monkeypatch):
    monkeypatch.setattr(neighbourhood_baseline, "DENSE_MAX_ENTRIES", 0)
    co_raters = CoRaters(_csr(histories), 40)
    everyone = np.arange(30)
    work = co_raters.user_work(everyone)
    budget = float(work.sum()) / 3
    chosen = sample_within_work(co_raters, everyone, budget)
    assert 1 <= len(chosen) < 30
    assert co_raters.user_work(chosen).sum() <= budget
    assert len(sample_within_work(co_raters, everyone, 0.0)) == 1
    assert len(sample_within_work(co_raters, everyone, float(work.sum()), max_users=4)) == 4


@pytest.mark.parametrize("dense", [True, False])
def test_no_more_users_than_the_score_budget_allows(histories, dense, monkeypatch):
    """Each user scored is a row over the whole catalogue: the model's score budget bounds them too."""
    if not dense:
        monkeypatch.setattr(neighbourhood_baseline, "DENSE_MAX_ENTRIES", 0)
    train = _csr([h[:-1] or h for h in histories])
    test = _csr([h[-1:] for h in histories])
    found = evaluate_neighbourhood_popularity(train, test, 40, max_scores=40 * 7)
    assert found["users_evaluated"] == 7
    assert evaluate_neighbourhood_popularity(train, test, 40)["users_evaluated"] == 30


def test_it_finds_a_users_own_taste_where_global_popularity_does_not():
    """Two tastes: the even movies (the catalogue's most popular) and the odd ones. Everyone's
    held-out movie is from their own taste; popularity recommends the even movies to everyone."""
    rng = np.random.default_rng(0)
    histories, held_out = [], []
    for user in range(60):
        taste = 0 if user < 40 else 1
        movies = [2 * int(m) + taste for m in rng.choice(15, size=6, replace=False)]
        histories.append(sorted(movies[:5]))
        held_out.append([movies[5]])
    train, test = _csr(histories), _csr(held_out)
    neighbourhood = evaluate_neighbourhood_popularity(train, test, 30)["recall_at_10"]
    popular = evaluate_scores(*popularity_vectors(train, 30), train, test)["recall_at_10"]
    assert neighbourhood > popular + 0.2
