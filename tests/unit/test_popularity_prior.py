"""The two-tower's popularity prior (trainer_service.popularity_prior): chosen on validation, 0 when
popularity does not help, and carried to the refit through the settings record."""

from __future__ import annotations

import json

import numpy as np

from trainer_service import popularity_prior
from trainer_service.kind_settings import NeuralSettings
from trainer_service.ratings import Ratings, Split

USERS, MOVIES = 300, 60


def _split(held_out_popular: bool) -> Split:
    """Movie m is rated by about 5 * (60 - m) of the users in training; each user's held-out movie is one
    of the five most rated (popularity helps) or of the five least rated (it misleads)."""
    rng = np.random.default_rng(0)
    users, items = [], []
    for movie in range(MOVIES):
        raters = rng.choice(USERS, size=5 * (MOVIES - movie), replace=False)
        users += raters.tolist()
        items += [movie] * raters.size
    train_rows = len(users)
    held = rng.integers(0, 5, size=USERS) + (0 if held_out_popular else MOVIES - 5)
    users += list(range(USERS))
    items += held.tolist()
    keys = {}
    for row, key in enumerate(zip(users, items, strict=True)):
        keys.setdefault(key, row)  # a held-out pair the user also rated in training counts once
    rows = np.array(sorted(keys.values()))
    n = rows.size
    data = Ratings(user_ids=np.array([str(u) for u in range(USERS)]), movie_ids=np.arange(MOVIES, dtype=np.int64),
                   titles=np.array([f"m{m}" for m in range(MOVIES)]), users=np.array(users, np.int32)[rows],
                   items=np.array(items, np.int32)[rows], ratings=np.ones(n, np.float32),
                   timestamps=np.zeros(n, np.int64), source="generated", fingerprint="x")
    return Split(data=data, train=np.flatnonzero(rows < train_rows), test=np.flatnonzero(rows >= train_rows),
                 name="generated")


def _vectors(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors that know nothing of popularity (as the cosine path's are)."""
    rng = np.random.default_rng(seed)
    users, items = rng.normal(size=(USERS, 8)), rng.normal(size=(MOVIES, 8))
    return ((users / np.linalg.norm(users, axis=1, keepdims=True)).astype(np.float32),
            (items / np.linalg.norm(items, axis=1, keepdims=True)).astype(np.float32))


def assert_walked_up_to_the_peak(gamma: float, figures: dict[str, float]) -> None:
    """The choices were tried in order while each did better than the one before; gamma is the last of those."""
    tried, values = list(figures), list(figures.values())
    assert tried == [f"{g:g}" for g in popularity_prior.GAMMA_CHOICES[:len(tried)]]
    peak = tried.index(f"{gamma:g}")
    assert all(before < after for before, after in zip(values[:peak], values[1:peak + 1], strict=True))
    assert peak == len(tried) - 1 == len(popularity_prior.GAMMA_CHOICES) - 1 or (
        peak == len(tried) - 2 and values[-1] <= values[-2])


def test_the_prior_is_chosen_where_popularity_predicts_and_left_out_where_it_misleads():
    users, items = _vectors()
    gamma, figures = popularity_prior.choose(users, items, _split(held_out_popular=True))
    assert gamma > 0 and figures[f"{gamma:g}"] == max(figures.values()) > figures["0"]
    assert_walked_up_to_the_peak(gamma, figures)
    gamma, figures = popularity_prior.choose(users, items, _split(held_out_popular=False))
    assert gamma == 0.0 and list(figures) == ["0", "0.05"] and figures["0.05"] <= figures["0"]


def test_the_figure_already_measured_without_the_prior_is_reused_not_recomputed():
    users, items = _vectors()
    _, figures = popularity_prior.choose(users, items, _split(held_out_popular=True),
                                         unscaled={"recall_at_10": 0.99})
    assert figures["0"] == 0.99


def test_scaling_is_by_ratings_plus_one_to_the_gamma_and_nothing_at_zero():
    split = _split(held_out_popular=True)
    _, items = _vectors()
    counts = popularity_prior.rating_counts(split, split.train)
    assert counts[0] > counts[-1] > 0
    assert popularity_prior.apply(items, counts, 0.0) is items
    scaled = popularity_prior.apply(items, counts, 0.1)
    assert scaled.dtype == items.dtype
    np.testing.assert_allclose(scaled / items, np.repeat(((counts + 1) ** 0.1)[:, None], 8, axis=1), rtol=1e-6)


def test_the_settings_record_carries_gamma_to_the_refit_and_old_records_read_as_none():
    chosen = NeuralSettings(epochs=6, popularity_prior=0.1)
    assert NeuralSettings.from_json(json.loads(json.dumps(chosen.to_json()))) == chosen
    assert NeuralSettings.from_json({"epochs": 6}).popularity_prior == 0.0
