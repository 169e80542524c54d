"""Time-aware training: the sequential kind, refits, and queries rebuilt from time-ordered histories.

Small generated data with a real order in it: every user walks along a
chain of movies (mostly the next one, sometimes a jump), so what comes next
is predictable from what came last and not from the unordered set.
"""

from __future__ import annotations

import numpy as np
import pytest

from movierec_common.session_query import QueryEncoder
from tests.session_reference import query_of
from trainer_service.evaluation import evaluate_scores
from trainer_service.ratings import Ratings, Split, time_ordered_history
from trainer_service.splits import make_split
from trainer_service.training import resolve_hyperparameters, train_model

CLOSED_FORM = ("ease", "dlae", "sequential", "ease_blend")


def chain_walks(users: int = 300, movies: int = 120, length: int = 30, seed: int = 0) -> Ratings:
    """Each user starts somewhere and mostly steps to the next movie of the chain (70%), else jumps."""
    rng = np.random.default_rng(seed)
    user_col, item_col, time_col = [], [], []
    for user in range(users):
        current = int(rng.integers(movies))
        seen: list[int] = []
        clock = int(rng.integers(10_000))
        while len(seen) < length:
            if current not in seen:
                seen.append(current)
                user_col.append(user)
                item_col.append(current)
                time_col.append(clock)
                clock += int(rng.integers(1, 50))
            current = (current + 1) % movies if rng.random() < 0.7 else int(rng.integers(movies))
    order = rng.permutation(len(user_col))  # file order must not matter, only timestamps
    users_arr = np.asarray(user_col)[order].astype(np.int32)
    items_arr = np.asarray(item_col)[order].astype(np.int32)
    return Ratings(
        user_ids=np.array([str(u + 1) for u in range(users)]), movie_ids=np.arange(1, movies + 1, dtype=np.int64),
        titles=np.array([f"Movie {m}" for m in range(1, movies + 1)]), users=users_arr, items=items_arr,
        ratings=np.ones(len(users_arr), np.float32), timestamps=np.asarray(time_col, np.int64)[order],
        source="chain walks", fingerprint=f"chains-{seed}")


@pytest.fixture(scope="module")
def walks() -> Split:
    return make_split(chain_walks(), "last_n_per_user", 5, seed=0)


def _recall(model, split: Split) -> float:
    return evaluate_scores(model.user_vectors, model.item_vectors, split.train_csr(), split.test_csr())["recall_at_10"]


def test_the_history_aware_kind_beats_ease_when_order_matters(walks):
    ease = train_model("ease", walks, resolve_hyperparameters("ease"), seed=1)
    sequential = train_model("sequential", walks, resolve_hyperparameters("sequential"), seed=1)
    assert "newest 5 per user" in sequential.validation_split  # settings chosen on a split carved by time
    settings = sequential.settings.to_json()  # as metadata.json holds it
    assert set(settings) == {"l2_lambda", "dlae_dropout", "decay", "floor",
                             "transition_decay", "transition_weight", "visitor"}
    # Visitors' short sessions get a rule of their own, chosen on the same split.
    assert set(settings["visitor"]) == {"decay", "floor", "transition_decay", "transition_weight"}
    assert sequential.encoder.visitor_parts is not None
    assert _recall(sequential, walks) > 1.3 * _recall(ease, walks)


def test_every_closed_form_query_rebuilt_from_the_time_ordered_history_is_the_stored_user_vector(walks):
    """What the documented rule computes for a known user's history (``tests.session_reference``, a stored
    user's parts over their whole history) is what training stored for them."""
    indptr, items, _ = time_ordered_history(walks.data, walks.train)
    for kind in CLOSED_FORM:
        hp = resolve_hyperparameters(kind, {"epochs": 2} if kind == "ease_blend" else {})
        model = train_model(kind, walks, hp, seed=1)
        encoder = QueryEncoder.from_json(model.encoder.to_json(), walks.data.n_items, model.user_vectors.shape[1])
        parts = model.encoder.to_json()["parts"]
        for user in (0, 17, 299):
            query = query_of(parts, items[indptr[user]:indptr[user + 1]], model.item_vectors)
            history_part = encoder.parts[0].width
            np.testing.assert_allclose(query[:history_part], model.user_vectors[user, :history_part],
                                       rtol=1e-5, atol=1e-6, err_msg=kind)
            if kind == "sequential":
                np.testing.assert_allclose(query, model.user_vectors[user], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["sequential", "dlae", "bpr"])
def test_a_refit_trains_on_every_rating_with_the_settings_it_is_given(walks, kind):
    hp = resolve_hyperparameters(kind, {"epochs": 3} if kind == "bpr" else {})
    evaluated = train_model(kind, walks, hp, seed=1)
    everything = Split(data=walks.data, train=np.arange(len(walks.data)), test=np.zeros(0, np.int64), name="all")
    refit = train_model(kind, everything, hp, seed=1, refit_settings=evaluated.settings)
    assert refit.refit and not evaluated.refit
    assert refit.settings == evaluated.settings
    assert refit.encoder == evaluated.encoder or kind == "bpr"  # the same rule (bpr's centre moves with it)
    assert refit.validation_metrics == {} and refit.validation_split == ""
    if kind == "bpr":
        assert refit.epochs_run == evaluated.best_epoch
    else:  # closed forms: the refit's history rows hold the held-out movies too
        held_out_user = int(walks.data.users[walks.test[0]])
        held_out_item = int(walks.data.items[walks.test[0]])
        assert evaluated.user_vectors[held_out_user, held_out_item] == 0
        assert refit.user_vectors[held_out_user, held_out_item] > 0


def test_time_ordered_history_sorts_by_timestamp_then_file_position():
    data = chain_walks(users=3, movies=20, length=6, seed=4)
    indptr, items, stamps = time_ordered_history(data, np.arange(len(data)))
    for user in range(3):
        row = slice(indptr[user], indptr[user + 1])
        assert np.all(np.diff(stamps[row]) >= 0)
        positions = np.flatnonzero(data.users == user)
        expected = data.items[positions[np.argsort(data.timestamps[positions], kind="stable")]]
        assert items[row].tolist() == expected.tolist()


def test_a_refit_reads_its_settings_back_from_metadata_json(walks):
    """The settings a version's metadata.json holds train the same model as the typed record they came from."""
    import json

    hp = resolve_hyperparameters("sequential")
    evaluated = train_model("sequential", walks, hp, seed=1)
    everything = Split(data=walks.data, train=np.arange(len(walks.data)), test=np.zeros(0, np.int64), name="all")
    typed = train_model("sequential", everything, hp, seed=1, refit_settings=evaluated.settings)
    stored = json.loads(json.dumps(evaluated.settings.to_json()))
    read_back = train_model("sequential", everything, hp, seed=1, refit_settings=stored)
    assert read_back.settings == typed.settings == evaluated.settings
    np.testing.assert_array_equal(read_back.user_vectors, typed.user_vectors)
    np.testing.assert_array_equal(read_back.item_vectors, typed.item_vectors)
