"""Every kind trains for real on ua.base and beats popularity on ua.test.

The runs use each kind's defaults with at most ``EPOCHS`` epochs (the full
default budget is the quality benchmark's job), and are shared per kind
(module scope) because they are the expensive part of the suite; each is
checked for falling loss, sane bookkeeping and quality.
"""

from __future__ import annotations

import numpy as np
import pytest

from movierec.v1.vocabulary import MODEL_KINDS
from trainer_service.closed_form_kinds import DLAE_DROPOUTS, DLAE_LAMBDAS
from trainer_service.data import load_movielens_100k
from trainer_service.errors import Cancelled
from trainer_service.evaluation import evaluate_scores, popularity_vectors
from trainer_service.model_kind import EpochReport
from trainer_service.splits import make_split
from trainer_service.training import resolve_hyperparameters, train_model

POPULARITY_RECALL_AT_10 = 0.1215
EASE_RECALL_AT_10 = 0.2710  # lambda = 300 on ua.test
CLOSED_FORM_KINDS = ("ease", "dlae", "sequential")  # no loss history
EPOCHS = 8


@pytest.fixture(scope="module")
def ua_split(movielens_dir):
    data, _ = load_movielens_100k(str(movielens_dir))
    return make_split(data, "ua", 0, seed=0)


@pytest.fixture(scope="module")
def default_runs(ua_split):
    """kind -> (TrainedModel, epoch reports, ua.test metrics), trained on first use."""
    cache = {}

    def run(kind):
        if kind not in cache:
            reports: list[EpochReport] = []
            hp = resolve_hyperparameters(kind, {} if kind in CLOSED_FORM_KINDS else {"epochs": EPOCHS})
            model = train_model(kind, ua_split, hp, seed=0, on_epoch=reports.append)
            metrics = evaluate_scores(model.user_vectors, model.item_vectors, ua_split.train_csr(),
                                      ua_split.test_csr())
            cache[kind] = (model, reports, metrics)
        return cache[kind]

    return run


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_each_kind_beats_popularity_on_ua_with_defaults(kind, default_runs, ua_split):
    model, reports, metrics = default_runs(kind)
    data = ua_split.data
    assert model.user_vectors.shape[0] == data.n_users and model.item_vectors.shape[0] == data.n_items
    assert model.user_vectors.shape[1] == model.item_vectors.shape[1]
    assert model.user_vectors.dtype == np.float32 and model.item_vectors.dtype == np.float32
    assert metrics["recall_at_10"] > POPULARITY_RECALL_AT_10, metrics
    assert model.train_seconds <= 180  # 60 s on an idle 2-core box; slack for a loaded runner
    assert model.epochs_run == len(reports) == len(model.validation_history)
    assert 1 <= model.best_epoch <= model.epochs_run
    if kind == "ease_blend":  # the kept metrics are the blend's, chosen after the neural epochs
        assert 0 < model.settings.blend_weight < 1
        assert model.validation_metrics["recall_at_10"] >= model.selection["neural_validation_metrics"]["recall_at_10"]
        assert model.validation_metrics["recall_at_10"] >= model.selection["dlae_validation_metrics"]["recall_at_10"]
        assert model.settings.l2_lambda in DLAE_LAMBDAS and model.settings.dlae_dropout in DLAE_DROPOUTS
    else:
        assert model.validation_metrics == model.validation_history[model.best_epoch - 1]
    assert "validation" in model.validation_split and "ua.base" in model.validation_split
    assert [r.epoch for r in reports] == list(range(1, len(reports) + 1))
    assert reports[-1].step == reports[-1].steps_per_epoch * len(reports)


@pytest.mark.parametrize("kind", [k for k in MODEL_KINDS if k not in CLOSED_FORM_KINDS])
def test_neural_kinds_lower_their_training_loss(kind, default_runs):
    model, _, _ = default_runs(kind)
    assert len(model.loss_history) >= 2
    assert model.loss_history[-1] < model.loss_history[0] - 0.01, model.loss_history
    assert all(np.isfinite(model.loss_history))


def test_dlae_chooses_on_validation_and_refits_on_all_training_ratings(default_runs, ua_split):
    model, _, metrics = default_runs("dlae")
    candidates = model.selection["candidates"]
    assert len(candidates) == len(DLAE_LAMBDAS) * len(DLAE_DROPOUTS)
    best = max(candidates, key=lambda c: (c["recall_at_10"], c["ndcg_at_10"]))
    assert (model.settings.l2_lambda, model.settings.dlae_dropout) == (best["l2_lambda"], best["dropout"])
    assert model.validation_metrics["recall_at_10"] == best["recall_at_10"]
    # The served history is all of ua.base, validation ratings included.
    assert model.user_vectors.sum() == len(ua_split.train)
    assert np.all(np.diag(model.item_vectors) == 0)
    assert metrics["recall_at_10"] > EASE_RECALL_AT_10 - 0.01, metrics  # in EASE's league, at a few seconds
    assert model.train_seconds <= 60


def test_dlae_respects_a_requested_lambda(ua_split):
    hp = resolve_hyperparameters("dlae", {"l2_lambda": 250})
    model = train_model("dlae", ua_split, hp, seed=1)
    assert model.settings.l2_lambda == 250
    assert {c["l2_lambda"] for c in model.selection["candidates"]} == {250}


def test_dlae_weights_match_the_closed_form():
    from trainer_service.models import dlae_item_weights, item_gram

    rng = np.random.default_rng(0)
    history = (rng.random((40, 12)) < 0.3).astype(np.float32)
    gram = item_gram(history)
    weights = dlae_item_weights(gram, 5.0, 0.5)
    penalty = np.diag(np.diag(gram) + 5.0)  # dropout 0.5 -> p / (1 - p) = 1
    expected = np.linalg.solve(gram + penalty, gram)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(weights, expected, rtol=1e-4, atol=1e-5)


def test_validation_never_uses_the_test_set(ua_split, monkeypatch):
    """The ratings train_model validates on, as index sets: carved from ua.base alone (all of it, none
    twice), disjoint from ua.test; and the validation Recall@10 the model reports is the one measured
    on them. EASE, whose validation is closed form, lets the test measure it again."""
    from trainer_service import history_matrix, model_kind, models

    carved = []
    carve = model_kind.carve_validation

    def recording(*args, **kwargs):  # the real carve, remembered
        carved.append(carve(*args, **kwargs))
        return carved[-1]

    monkeypatch.setattr(model_kind, "carve_validation", recording)
    hp = resolve_hyperparameters("ease", {"l2_lambda": 300})
    model = train_model("ease", ua_split, hp, seed=0)
    (validation,) = carved
    assert validation.test.size > 0 and validation.train.size > 0
    assert np.intersect1d(validation.test, ua_split.test).size == 0
    assert np.intersect1d(validation.train, ua_split.test).size == 0
    assert np.intersect1d(validation.train, validation.test).size == 0
    np.testing.assert_array_equal(np.union1d(validation.train, validation.test), ua_split.train)
    held_in = history_matrix.binary_history(validation.train_csr(), ua_split.data.n_items)
    measured = evaluate_scores(held_in, models.ease_item_weights(held_in, 300.0).T, validation.train_csr(),
                               validation.test_csr(), ks=(10, 50))
    assert model.validation_metrics["recall_at_10"] == pytest.approx(measured["recall_at_10"])
    assert model.validation_metrics["ndcg_at_10"] == pytest.approx(measured["ndcg_at_10"])


def test_dropout_is_active_only_in_training():
    from trainer_service.models import tf
    from trainer_service.training import kind_named

    hp = resolve_hyperparameters("two_tower_dropout", {"dropout_rate": 0.5})
    model = kind_named("two_tower_dropout").build(20, 30, hp)
    users = tf.range(20)
    train_a = model.user_embeddings(users, training=True).numpy()
    train_b = model.user_embeddings(users, training=True).numpy()
    infer_a = model.user_embeddings(users, training=False).numpy()
    infer_b = model.user_embeddings(users, training=False).numpy()
    assert not np.allclose(train_a, train_b)
    assert np.array_equal(infer_a, infer_b)
    assert np.mean(train_a == 0) > 0.3  # about half the units dropped
    features = {"user": tf.constant([1, 2, 3]), "item": tf.constant([4, 5, 6])}
    assert model.compute_loss(features, training=False).numpy() == model.compute_loss(features, training=False).numpy()
    assert model.compute_loss(features, training=True).numpy() != model.compute_loss(features, training=True).numpy()


def test_should_stop_cancels_promptly(ua_split):
    """Training asks before every batch and stops at the first yes: not one more batch, no epoch finished."""
    calls = {"n": 0}
    reports: list[EpochReport] = []

    def should_stop():
        calls["n"] += 1
        return calls["n"] >= 5

    with pytest.raises(Cancelled):
        train_model("two_tower", ua_split, resolve_hyperparameters("two_tower", {}), seed=0,
                    on_epoch=reports.append, should_stop=should_stop)
    assert calls["n"] == 5, "training went on (and asked again) after it was told to stop"
    assert reports == []
    for kind in CLOSED_FORM_KINDS:
        with pytest.raises(Cancelled):
            train_model(kind, ua_split, resolve_hyperparameters(kind, {}), seed=0, should_stop=lambda: True)


def test_training_is_seeded_and_reproducible(ua_split):
    hp = resolve_hyperparameters("bpr", {"epochs": 1, "batch_size": 4096})
    first = train_model("bpr", ua_split, hp, seed=3)
    second = train_model("bpr", ua_split, hp, seed=3)
    other = train_model("bpr", ua_split, hp, seed=4)
    np.testing.assert_allclose(first.user_vectors, second.user_vectors, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(first.item_vectors, second.item_vectors, rtol=1e-5, atol=1e-6)
    assert first.loss_history == pytest.approx(second.loss_history, rel=1e-5)
    assert not np.allclose(first.user_vectors, other.user_vectors)


def test_unknown_kind_is_rejected(ua_split):
    with pytest.raises(ValueError, match="unknown model kind"):
        train_model("svd++", ua_split, resolve_hyperparameters("two_tower", {}), seed=0)


def test_popularity_helper_is_a_dot_product(ua_split):
    users, items = popularity_vectors(ua_split.train_csr(), ua_split.data.n_items)
    scores = users @ items.T
    assert np.array_equal(scores[0], np.bincount(ua_split.data.items[ua_split.train], minlength=1682))


# --------------------------------------------------------------------------- hyperparameters


def test_hyperparameter_defaults_and_overrides():
    for kind in MODEL_KINDS:
        assert resolve_hyperparameters(kind, {}) == resolve_hyperparameters(kind, {"epochs": 0})
    hp = resolve_hyperparameters("two_tower", {"epochs": 7, "learning_rate": 0.01, "batch_size": 1024.0})
    assert (hp.epochs, hp.learning_rate, hp.batch_size) == (7, 0.01, 1024)
    assert isinstance(hp.batch_size, int)
    assert resolve_hyperparameters("two_tower_dropout", {}).dropout_rate > 0


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"epochs": 201}, ["epochs", "201", "[1, 200]"]),
        ({"embedding_dim": 513}, ["embedding_dim", "513", "512"]),
        ({"batch_size": 8}, ["batch_size", "8", "[16, 8192]"]),
        ({"batch_size": 100000}, ["batch_size", "100000"]),
        ({"learning_rate": 2.0}, ["learning_rate", "2.0"]),
        ({"dropout_rate": 0.95}, ["dropout_rate", "0.95", "0.9"]),
        ({"epochs": -1}, ["epochs", "-1"]),
        ({"epochs": 2.5}, ["epochs", "2.5", "whole number"]),
        ({"learning_rate": float("nan")}, ["learning_rate", "finite"]),
        ({"momentum": 0.9}, ["unknown hyperparameter", "momentum"]),
    ],
)
def test_out_of_bounds_hyperparameters_are_rejected_with_the_range(overrides, fragments):
    with pytest.raises(ValueError) as error:
        resolve_hyperparameters("two_tower", overrides)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_unknown_kind_hyperparameters():
    with pytest.raises(ValueError, match="unknown model kind 'nope'"):
        resolve_hyperparameters("nope", {})


def test_closed_form_kinds_refuse_catalogues_too_large_for_a_dense_inverse():
    from trainer_service import training
    from trainer_service.closed_form_kinds import MAX_CLOSED_FORM_ITEMS
    from trainer_service.ratings import Ratings, Split

    items = MAX_CLOSED_FORM_ITEMS + 1
    data = Ratings(
        user_ids=np.array(["1"]), movie_ids=np.arange(items, dtype=np.int64), titles=np.array(["t"] * items),
        users=np.zeros(2, np.int32), items=np.array([0, 1], np.int32), ratings=np.ones(2, np.float32),
        timestamps=np.zeros(2, np.int64), source="generated", fingerprint="x")
    split = Split(data=data, train=np.array([0]), test=np.array([1]), name="generated")
    for kind in ("ease", "dlae", "ease_blend"):
        with pytest.raises(ValueError, match="at most 20,000 movies") as refused:
            training.train_model(kind, split, resolve_hyperparameters(kind, {}), seed=1)
        assert "Kinds that fit this catalogue: two_tower, two_tower_dropout, bpr" in str(refused.value)


def test_sampled_softmax_beats_popularity_on_a_small_synthetic_catalogue(tmp_path, monkeypatch):
    """The large-catalogue path (in-batch negatives, logQ correction, accidental hits removed), forced on a
    catalogue small enough for CI, must learn the synthetic tastes: clearly above popularity."""
    from trainer_service import models, synth
    from trainer_service.data import load_ratings_files

    synth.generate(tmp_path, users=1500, movies=1000, ratings=60_000, seed=11)
    data = load_ratings_files(str(tmp_path), "ratings.csv", "movies.csv")
    split = make_split(data, "last_n_per_user", 1, seed=0)
    monkeypatch.setattr(models, "SAMPLED_SOFTMAX_MIN_ITEMS", 500)
    model = train_model("two_tower", split, resolve_hyperparameters("two_tower", {"epochs": 8, "batch_size": 256}),
                        seed=0)
    assert model.selection["softmax"] == "sampled"
    train_csr, test_csr = split.train_csr(), split.test_csr()
    ours = evaluate_scores(model.user_vectors, model.item_vectors, train_csr, test_csr)["recall_at_10"]
    popular = evaluate_scores(*popularity_vectors(train_csr, data.n_items), train_csr, test_csr)["recall_at_10"]
    print(f"sampled softmax Recall@10 {ours:.4f}, popularity {popular:.4f}")
    assert ours >= 1.5 * popular, (ours, popular)
    # The popularity prior was chosen on validation: the best of its choices, applied to unit vectors.
    from tests.unit.test_popularity_prior import assert_walked_up_to_the_peak
    from trainer_service import popularity_prior
    from trainer_service.kind_settings import NeuralSettings

    figures = model.selection["popularity_prior"]
    gamma = model.settings.popularity_prior
    assert_walked_up_to_the_peak(gamma, figures)
    counts = popularity_prior.rating_counts(split, split.train)
    np.testing.assert_allclose(np.linalg.norm(model.item_vectors, axis=1), (counts + 1) ** gamma, rtol=1e-4)
    # A refit applies the evaluation run's choice, with the counts of all its ratings.
    refit = train_model("two_tower", split, resolve_hyperparameters("two_tower", {"batch_size": 256}), seed=0,
                        refit_settings=NeuralSettings(epochs=1, popularity_prior=0.2))
    assert refit.settings == NeuralSettings(epochs=1, popularity_prior=0.2)
    np.testing.assert_allclose(np.linalg.norm(refit.item_vectors, axis=1), (counts + 1) ** 0.2, rtol=1e-4)


# --------------------------------------------------------------------------- the kinds' settings records


def test_every_settings_record_reads_back_what_it_writes_and_refuses_what_it_does_not_know():
    import json

    from trainer_service.kind_settings import (
        BlendSettings,
        DlaeSettings,
        EaseSettings,
        NeuralSettings,
        RecencyRule,
        SequentialSettings,
    )

    records = [NeuralSettings(epochs=7), EaseSettings(l2_lambda=300.0), DlaeSettings(150.0, 0.67),
               BlendSettings(epochs=3, l2_lambda=300.0, dlae_dropout=0.5, blend_weight=0.4, scales=(1.5, 0.25)),
               SequentialSettings(300.0, 0.5, 5.0, 0.05, 1.0, 2.0, visitor=RecencyRule(3.0, 0.0, 1.0, 4.0)),
               SequentialSettings(300.0, 0.5, 5.0, 0.05, 1.0, 2.0)]
    for record in records:
        stored = json.loads(json.dumps(record.to_json()))  # as metadata.json holds it
        assert type(record).from_json(stored) == record
    assert BlendSettings(3, 300.0, 0.5, 0.4, (1.5, 0.25)).to_json()["scales"] == [1.5, 0.25]
    with pytest.raises(ValueError, match="no field"):
        NeuralSettings.from_json({"epochs": 3, "dropout": 0.5})
    with pytest.raises(ValueError, match="missing"):
        DlaeSettings.from_json({"l2_lambda": 150.0})
    with pytest.raises(ValueError, match="whole number"):
        NeuralSettings.from_json({"epochs": 2.5})
    with pytest.raises(ValueError, match="number"):
        EaseSettings.from_json({"l2_lambda": "300"})


def test_a_kind_refits_only_with_its_own_settings(ua_split):
    from trainer_service.kind_settings import NeuralSettings

    with pytest.raises(TypeError, match="dlae refits with DlaeSettings, got NeuralSettings"):
        train_model("dlae", ua_split, resolve_hyperparameters("dlae"), seed=0, refit_settings=NeuralSettings(3))
