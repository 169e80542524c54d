"""Sessions (``recent_movie_ids``) on the serving side: ``QueryEncoder`` and the
Retriever's answers against ``tests.session_reference`` (the documented rules,
written independently of the encoder), the
exact backend's sparse path against its dense one, and what the registry does
with a version's ``query_encoder`` (parse, carry across the loader hand-off,
refuse sessions without one, reject a broken one)."""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
import pytest

from movierec.v1.vocabulary import REJECTED
from movierec_common import artifact
from movierec_common.artifact import ModelArtifact
from movierec_common.session_query import (
    HISTORY,
    METADATA_KEY,
    POOLED,
    Part,
    QueryEncoder,
    history_encoder,
    latest_occurrences,
)
from recommender_service.errors import SessionsUnsupported
from recommender_service.registry import ModelRegistry
from recommender_service.retrieval import Retriever
from recommender_service.top_k import BruteForce, top_k_indices
from recommender_service.validation import validate_version
from tests.artifacts import tiny_artifact
from tests.session_reference import best, known_user_query, once_at_latest, visitor_query


def timed(base: ModelArtifact, seed: int = 0) -> ModelArtifact:
    """The artifact with every seen row in (shuffled) time order and timestamps beside it, as the trainer writes."""
    rng = np.random.default_rng(seed)
    indptr, rows, stamps = base.seen_indptr, [], []
    for user in range(base.num_users):
        row = rng.permutation(base.seen_indices[indptr[user]:indptr[user + 1]])
        rows.append(row)
        stamps.append(np.sort(rng.integers(8e8, 9e8, size=row.size)))
    return dataclasses.replace(base, seen_indices=np.concatenate(rows).astype(np.int32),
                               seen_timestamps=np.concatenate(stamps).astype(np.int64))


def ease_like(users: int = 25, items: int = 300, seed: int = 1) -> tuple[ModelArtifact, QueryEncoder]:
    """History rows against item-item weights, as EASE^R exports them (vectors as wide as the catalogue)."""
    base = timed(tiny_artifact(users=users, items=items, dim=4, seed=seed), seed)
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(items, items)).astype(np.float32)
    np.fill_diagonal(weights, 0.0)
    history = np.zeros((users, items), dtype=np.float32)
    for user in range(users):
        history[user, base.seen_items(user)] = 1.0
    art = dataclasses.replace(base, user_vectors=history, item_vectors=np.ascontiguousarray(weights.T))
    return art, history_encoder(items)


def ranked(scores: np.ndarray, exclude, k: int) -> list[int]:
    """The exact answer by hand: best first, ties to the lower index, exclusions left out."""
    scores = scores.astype(np.float64).copy()
    scores[np.asarray(list(exclude), dtype=np.int64)] = -np.inf
    order = [i for i in np.lexsort((np.arange(scores.size), -scores)).tolist() if np.isfinite(scores[i])]
    return order[:k]


POOLED_ENCODER = QueryEncoder((Part(POOLED, 8, scale=1.7, decay=2.0),))


def every_rule(art: ModelArtifact, dim: int = 8) -> QueryEncoder:
    """Decay with a floor, centring, a fixed dim, two pooled parts, and a visitor rule of its own."""
    center = tuple(float(c) for c in art.item_vectors[:, :dim - 2].mean(axis=0))
    return QueryEncoder(
        (Part(POOLED, dim - 2, scale=1.7, decay=2.0, floor=0.3, center=center),
         Part(POOLED, 2, scale=0.8, decay=5.0, fixed=((1, 1.0),))),
        visitor_parts=(Part(POOLED, dim - 2, scale=2.5, decay=1.0, floor=0.05, center=center),
                       Part(POOLED, 2, scale=0.4, fixed=((1, 1.0),))))


def test_the_encoder_follows_the_documented_rules():
    """QueryEncoder against the reference: decay, floor, centring, fixed dims, the known user's share of the
    pooled part, the history row, and the visitor rule, with repeats in the sessions."""
    art = timed(tiny_artifact(users=12, items=40))
    history_art, history_rule = ease_like(users=6, items=40)
    rich = every_rule(art)
    decaying_history = QueryEncoder((Part(HISTORY, 40, scale=0.5, decay=3.0, floor=0.1),))
    cases = [(art, POOLED_ENCODER), (art, rich), (history_art, history_rule), (history_art, decaying_history)]
    rng = np.random.default_rng(9)
    for served, encoder in cases:
        description = encoder.to_json()
        for user in range(served.num_users):
            recent = rng.integers(0, served.num_items, size=int(rng.integers(1, 9)))
            history = served.seen_indices[served.seen_indptr[user]:served.seen_indptr[user + 1]]
            np.testing.assert_allclose(encoder.encode(recent, served.item_vectors),
                                       visitor_query(description, recent, served.item_vectors), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(
                encoder.encode_for_user(served.user_vectors[user], history, recent, served.item_vectors),
                known_user_query(description, served.user_vectors[user], history, recent, served.item_vectors),
                rtol=1e-5, atol=1e-6)
    # The visitor rule is really another rule: the same session gives another query under it.
    description = rich.to_json()
    assert not np.allclose(visitor_query(description, [3, 9, 4], art.item_vectors),
                           visitor_query({"parts": description["parts"]}, [3, 9, 4], art.item_vectors))


def test_served_sessions_follow_the_documented_rules():
    """The Retriever's answers for visitors and known users under an encoder using every rule."""
    art = timed(tiny_artifact(users=12, items=40), seed=4)
    encoder = every_rule(art)
    description = encoder.to_json()
    retriever = Retriever(art, query_encoder=encoder)
    rng = np.random.default_rng(4)
    for user in range(art.num_users):
        recent = rng.integers(0, art.num_items, size=int(rng.integers(1, 7)))
        history = art.seen_indices[art.seen_indptr[user]:art.seen_indptr[user + 1]]
        query = known_user_query(description, art.user_vectors[user], history, recent, art.item_vectors)
        expected = best(art.item_vectors @ query, [*history.tolist(), *recent.tolist()], 10)
        answer = retriever.recommend_session(art.user_ids[user], 10, art.movie_ids[recent].tolist())
        assert ids_of(answer) == art.movie_ids[expected].tolist()
        np.testing.assert_allclose([s.score for s in answer.items], (art.item_vectors @ query)[expected], rtol=1e-4)
        query = visitor_query(description, recent, art.item_vectors)
        visitor = retriever.recommend_session("a visitor", 10, art.movie_ids[recent].tolist())
        assert ids_of(visitor) == art.movie_ids[best(art.item_vectors @ query, recent, 10)].tolist()


def ids_of(answer) -> list[int]:
    return [item.movie_id for item in answer.items]


# --------------------------------------------------------------------------- Retriever


def test_a_known_users_recent_movies_extend_their_history_and_are_excluded():
    art = timed(tiny_artifact(users=20, items=40))
    retriever = Retriever(art, query_encoder=POOLED_ENCODER)
    for user in range(art.num_users):
        recent = np.array([(user * 7 + 3) % 40, (user * 11 + 5) % 40, (user * 13 + 1) % 40])
        history = art.seen_indices[art.seen_indptr[user]:art.seen_indptr[user + 1]]  # time order, as stored
        query = known_user_query(POOLED_ENCODER.to_json(), art.user_vectors[user], history, recent,
                                 art.item_vectors)
        expected = ranked(art.item_vectors @ query, set(art.seen_items(user).tolist()) | set(recent.tolist()), 10)

        answer = retriever.recommend_session(art.user_ids[user], 10, art.movie_ids[recent].tolist())

        assert ids_of(answer) == art.movie_ids[expected].tolist()
        assert not answer.cold_start and answer.unknown_movie_ids == []
        np.testing.assert_allclose([s.score for s in answer.items], (art.item_vectors @ query)[expected], rtol=1e-5)
        assert not set(ids_of(answer)) & set(art.movie_ids[recent].tolist())
        included = retriever.recommend_session(art.user_ids[user], 40, art.movie_ids[recent].tolist(),
                                               exclude_seen=False)
        assert len(included.items) == 40  # nothing left out


def test_the_history_is_read_in_time_order():
    """A decaying encoder weighs the newest movies most, so the order the stored rows keep matters."""
    art = timed(tiny_artifact(users=10, items=30))
    retriever = Retriever(art, query_encoder=POOLED_ENCODER)
    catalogue = retriever.catalogue
    for user in range(art.num_users):
        stored = art.seen_indices[art.seen_indptr[user]:art.seen_indptr[user + 1]]
        assert retriever.sessions.history(user).tolist() == stored.tolist()
        assert catalogue.seen_items(user).tolist() == sorted(stored.tolist())  # exclusion keeps its sorted copy
    assert catalogue.history_indices.dtype == np.int32 and catalogue.history_indptr.dtype == np.int64


def test_an_unknown_user_with_recent_movies_gets_a_personal_answer():
    art = tiny_artifact(users=10, items=40)
    for encoder in (POOLED_ENCODER, QueryEncoder((Part(POOLED, 6, scale=0.5), Part(POOLED, 2, fixed=((1, 1.0),))))):
        retriever = Retriever(art, query_encoder=encoder)
        recent = np.array([4, 17, 9, 30])
        query = visitor_query(encoder.to_json(), recent, art.item_vectors)

        answer = retriever.recommend_session("a visitor", 10, art.movie_ids[recent].tolist())

        assert not answer.cold_start
        assert ids_of(answer) == art.movie_ids[ranked(art.item_vectors @ query, recent, 10)].tolist()
        kept = retriever.recommend_session("a visitor", 10, art.movie_ids[recent].tolist(), exclude_seen=False)
        assert ids_of(kept) == art.movie_ids[ranked(art.item_vectors @ query, [], 10)].tolist()
        assert ids_of(answer) != ids_of(retriever.recommend("a visitor", 10))  # not the popularity list


def test_unknown_movies_are_reported_once_in_request_order_and_ignored():
    art = tiny_artifact(users=10, items=40)
    retriever = Retriever(art, query_encoder=POOLED_ENCODER)
    known = art.movie_ids[[3, 8]].tolist()

    answer = retriever.recommend_session("a visitor", 5, [999, known[0], 5, 999, known[1], -1, 5])
    assert answer.unknown_movie_ids == [999, 5, -1]
    assert ids_of(answer) == ids_of(retriever.recommend_session("a visitor", 5, known))

    # Nothing known: a visitor gets the popularity list, a user their usual answer, both with the report.
    cold = retriever.recommend_session("a visitor", 5, [999, 998])
    assert cold.cold_start and ids_of(cold) == ids_of(retriever.recommend("a visitor", 5))
    assert cold.unknown_movie_ids == [999, 998]
    user = retriever.recommend_session(art.user_ids[2], 5, [999])
    assert not user.cold_start and user.unknown_movie_ids == [999]
    assert ids_of(user) == ids_of(retriever.recommend(art.user_ids[2], 5))


def test_each_movie_is_kept_once_at_its_latest_position_in_short_and_long_histories():
    """Short histories take a list-based path, long ones np.unique: both against the reference."""
    rng = np.random.default_rng(5)
    for size in (0, 1, 2, 10, 64, 65, 300):
        for catalogue in (8, 1000):  # many repeats, few repeats
            items = rng.integers(0, catalogue, size=size)
            assert latest_occurrences(items).tolist() == once_at_latest(items)
            assert latest_occurrences(items).dtype == np.int64


def test_a_movie_sent_twice_counts_once_at_its_latest_position():
    art = tiny_artifact(users=10, items=40)
    retriever = Retriever(art, query_encoder=POOLED_ENCODER)
    a, b, c = art.movie_ids[[1, 2, 3]].tolist()
    for user_id in ("a visitor", art.user_ids[0]):
        twice = retriever.recommend_session(user_id, 10, [a, b, a, c, b])
        once = retriever.recommend_session(user_id, 10, [a, c, b])
        assert ids_of(twice) == ids_of(once) and twice.unknown_movie_ids == []
        assert [s.score for s in twice.items] == [s.score for s in once.items]


def test_history_encoders_score_with_the_sparse_path_and_match_the_dense_product():
    art, encoder = ease_like()
    retriever = Retriever(art, query_encoder=encoder)
    dense = art.item_vectors.astype(np.float64)
    recent = np.array([10, 250, 42, 7])
    query = visitor_query(encoder.to_json(), recent, art.item_vectors)
    assert np.count_nonzero(query) * 4 < query.size  # the sparse path is the one taken

    visitor = retriever.recommend_session("a visitor", 10, art.movie_ids[recent].tolist())
    assert ids_of(visitor) == art.movie_ids[ranked(dense @ query, recent, 10)].tolist()
    for user in range(0, art.num_users, 5):
        history = art.seen_indices[art.seen_indptr[user]:art.seen_indptr[user + 1]]
        query = known_user_query(encoder.to_json(), art.user_vectors[user], history, recent, art.item_vectors)
        exclude = set(history.tolist()) | set(recent.tolist())
        answer = retriever.recommend_session(art.user_ids[user], 10, art.movie_ids[recent].tolist())
        assert ids_of(answer) == art.movie_ids[ranked(dense @ query, exclude, 10)].tolist()


def test_the_sparse_path_agrees_with_the_dense_one_ties_included():
    rng = np.random.default_rng(5)
    for width, nonzeros in ((300, 1), (300, 20), (600, 149), (256, 63)):
        # Small integers: both paths sum them exactly, so scores tie exactly where they should.
        items = rng.integers(-3, 4, size=(200, width)).astype(np.float32)
        backend = BruteForce(items)
        assert backend.item_rows.flags.f_contiguous  # wide: columns contiguous for the sparse path
        for _ in range(20):
            query = np.zeros(width, dtype=np.float32)
            query[rng.choice(width, size=nonzeros, replace=False)] = rng.integers(1, 3, size=nonzeros)
            exclude = np.unique(rng.choice(200, size=15))
            scores = items @ query
            scores[exclude] = -np.inf
            for k in (1, 10, 200):
                expected = top_k_indices(scores, k)
                found, values = backend.top_k(query, k, exclude)
                assert found.tolist() == expected.tolist()
                np.testing.assert_array_equal(values, scores[expected])
        float_items = rng.normal(size=(200, width)).astype(np.float32)
        query = np.zeros(width, dtype=np.float32)
        query[rng.choice(width, size=nonzeros, replace=False)] = rng.random(nonzeros)
        np.testing.assert_allclose(BruteForce(float_items).scores(query), float_items @ query, rtol=1e-5, atol=1e-5)


def test_without_an_encoder_sessions_are_refused_and_everything_else_answers():
    art = tiny_artifact()
    retriever = Retriever(art)
    assert retriever.sessions is None
    with pytest.raises(SessionsUnsupported):
        retriever.recommend_session(art.user_ids[0], 5, [int(art.movie_ids[0])])
    with pytest.raises(SessionsUnsupported):  # even when none of the movies is known
        retriever.recommend_session("a visitor", 5, [999])
    assert len(retriever.recommend(art.user_ids[0], 5).items) == 5


def test_movie_indices_are_one_vectorised_lookup():
    art = dataclasses.replace(tiny_artifact(items=6), movie_ids=np.array([50, 7, 1682, 3, 181, 9], dtype=np.int64))
    retriever = Retriever(art)
    assert retriever.movie_indices(np.array([7, 8, 181, 50, 0, 99999, 3])).tolist() == [1, -1, 4, 0, -1, -1, 3]
    assert retriever.movie_index(1682) == 2


# --------------------------------------------------------------------------- the registry and the loader


def _publish(root, version: int, art: ModelArtifact, metadata: dict) -> str:
    folder = os.path.join(str(root), str(version))
    artifact.write_version(folder, art, artifact.VersionMetadata(
        model_kind="test", query_encoder=metadata.get(METADATA_KEY)))
    return folder


def test_the_encoder_and_the_history_cross_the_loader_hand_off(tmp_path):
    from recommender_service.isolation import HandoffPickler, HandoffUnpickler
    from recommender_service.loader import warmed_retriever

    art, encoder = ease_like(users=30, items=300)
    folder = _publish(tmp_path / "models", 1, art, {METADATA_KEY: encoder.to_json()})
    validated = validate_version(folder)
    handoff = tmp_path / "handoff"
    handoff.mkdir()
    buffer = io.BytesIO()
    HandoffPickler(buffer, str(handoff)).dump(validated)
    received = HandoffUnpickler(io.BytesIO(buffer.getvalue())).load()
    assert os.listdir(handoff) == []

    assert received.query_encoder == encoder
    catalogue = received.catalogue
    np.testing.assert_array_equal(catalogue.history_indptr, art.seen_indptr)
    np.testing.assert_array_equal(catalogue.history_indices, art.seen_indices)
    assert received.item_vectors.flags.f_contiguous and not received.item_vectors.flags.writeable  # mapped as is
    retriever = warmed_retriever(received, folder)
    assert retriever.top_k.item_rows is received.item_vectors or np.shares_memory(
        retriever.top_k.item_rows, received.item_vectors)  # no copy in the serving process
    recent = art.movie_ids[[3, 99, 250]].tolist()
    served = retriever.recommend_session(art.user_ids[4], 10, recent)
    assert ids_of(served) == ids_of(Retriever(art, query_encoder=encoder).recommend_session(art.user_ids[4], 10,
                                                                                          recent))


def test_versions_without_an_encoder_serve_and_broken_encoders_are_rejected(tmp_path):
    root = tmp_path / "models"
    art = timed(tiny_artifact())
    _publish(root, 1, art, {})
    registry = ModelRegistry(str(root))
    registry.poll_once()
    model = registry.current()
    assert model.version == 1 and model.retriever.sessions is None and model.serving["serving_sessions"] == 0.0
    assert len(model.retriever.recommend(art.user_ids[0], 5).items) == 5

    wrong_width = QueryEncoder((Part(POOLED, 7),)).to_json()
    wrong_history = QueryEncoder((Part(HISTORY, 8),)).to_json()
    _publish(root, 2, art, {METADATA_KEY: wrong_width})
    _publish(root, 3, art, {METADATA_KEY: {"parts": "pooled"}})
    _publish(root, 4, art, {METADATA_KEY: wrong_history})
    registry.poll_once()
    _, versions = registry.status()
    reasons = {v.version: v.reason for v in versions if v.state == REJECTED}
    assert "parts add up to width 7, but the model's vectors have 8 dimensions" in reasons[2]
    assert "non-empty list of parts" in reasons[3]
    assert "history part of width 8, but the catalogue has 30 movies" in reasons[4]
    assert registry.current().version == 1

    _publish(root, 5, art, {METADATA_KEY: POOLED_ENCODER.to_json()})
    registry.poll_once()
    model = registry.current()
    assert model.version == 5 and model.retriever.sessions.encoder == POOLED_ENCODER
    assert model.serving["serving_sessions"] == 1.0
    assert not model.retriever.recommend_session("a visitor", 5, art.movie_ids[:3].tolist()).cold_start
