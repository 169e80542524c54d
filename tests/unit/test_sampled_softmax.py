"""The two-tower's sampled-softmax options (issue 20): cosine scores by default on large catalogues only,
and uniform negatives mixed into the in-batch ones. Built on tiny towers, no training: seconds."""

from __future__ import annotations

import dataclasses

import numpy as np

from trainer_service.hyperparams import COMMON
from trainer_service.models import TwoTowerModel

USERS, MOVIES = 30, 50


def _vectors(sampled: bool, **changes):
    model = TwoTowerModel(USERS, MOVIES, dataclasses.replace(COMMON, **changes), sampled=sampled)
    return model.export_vectors(None)


def _norms(vectors: np.ndarray) -> np.ndarray:
    return np.linalg.norm(vectors, axis=1)


def test_sampled_path_scores_by_cosine_at_its_temperature_and_the_full_softmax_is_unchanged():
    users, items = _vectors(sampled=True)
    np.testing.assert_allclose(_norms(items), 1.0, rtol=1e-5)  # popularity cannot live in a vector's length
    np.testing.assert_allclose(_norms(users), 1.0 / COMMON.sampled_temperature, rtol=1e-5)
    users, items = _vectors(sampled=False)  # full softmax: the dot product, as before
    assert np.ptp(_norms(items)) > 1e-3 and not np.allclose(_norms(users), 1.0)
    users, items = _vectors(sampled=True, sampled_temperature=0.0)  # the setting before issue 20
    assert np.ptp(_norms(items)) > 1e-3
    users, items = _vectors(sampled=True, l2_normalize=1, temperature=0.5)  # the caller's own cosine
    np.testing.assert_allclose(_norms(users), 2.0, rtol=1e-5)


def test_uniform_negatives_join_the_in_batch_ones_with_the_mixture_probability():
    users = np.arange(8) % USERS
    items = np.array([0, 0, 0, 0, 1, 1, 2, 3])  # a popular movie 0; most of the catalogue never rated
    model = TwoTowerModel(USERS, MOVIES, dataclasses.replace(COMMON, uniform_negatives=64), sampled=True)
    model.compile(optimizer="adam")
    features = model.training_examples(users, items, None)
    np.testing.assert_allclose(features["item_probability"], [0.5] * 4 + [0.25] * 2 + [0.125] * 2)
    mixed = float(model.compute_loss(features, training=True))
    model.hp = dataclasses.replace(model.hp, uniform_negatives=0)  # the same weights, in-batch negatives only
    in_batch = float(model.compute_loss(features, training=True))
    assert np.isfinite(mixed) and np.isfinite(in_batch)
    assert mixed > in_batch  # 64 more negatives: a larger softmax denominator at the same weights
