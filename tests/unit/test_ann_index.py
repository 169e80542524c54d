"""The faiss index a version ships, and the backend that serves from it, against exact search."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from movierec_common import ann_index
from movierec_common.artifact import ArtifactError
from recommender_service.catalogue import ServingCatalogue
from recommender_service.rankings import Rankings
from recommender_service.retrieval import Retriever
from recommender_service.top_k import BruteForce, FaissIVF
from tests.artifacts import clustered_artifact, tiny_artifact


@pytest.fixture(scope="module")
def clustered():
    return clustered_artifact(users=600, items=20_000, seed=3)


@pytest.fixture(scope="module")
def built(clustered):
    return ann_index.build(clustered.item_vectors, queries=clustered.user_vectors, threads=2)


def _backend(clustered, built):
    index, params = built
    loaded = ann_index.deserialize(ann_index.serialize(index), params, clustered.num_items, 64)
    norms = np.linalg.norm(clustered.item_vectors, axis=1)
    return FaissIVF(loaded, norms, params.max_first_fetch)


def test_params_follow_the_catalogue_and_roundtrip_through_metadata(clustered, built):
    index, params = built
    assert params.nlist == ann_index.nlist_for(20_000) == 512
    assert params.num_items == index.ntotal == 20_000 and params.dim == 64
    assert params.calibration_recall_at_10 >= ann_index.TARGET_RECALL
    assert params.train_vectors <= ann_index.TRAIN_POINTS_PER_LIST * params.nlist
    assert ann_index.IndexParams.from_metadata(params.as_metadata()) == params
    assert ann_index.IndexParams.from_metadata(None) is None
    assert ann_index.IndexParams.from_metadata(ann_index.exact_metadata()) is None
    assert ann_index.nlist_for(1_000_000) == 4096 and ann_index.nlist_for(100) == 2


def test_roundtrip_recall_beats_095_with_seen_excluded_and_k_distinct_results(clustered, built):
    backend = _backend(clustered, built)
    exact = BruteForce(clustered.item_vectors)
    catalogue = ServingCatalogue.from_artifact(clustered)
    recalls = []
    for user in range(0, clustered.num_users, 3):
        seen = catalogue.seen_items(user)
        query = clustered.user_vectors[user]
        truth, _ = exact.top_k(query, 10, seen)
        found, scores = backend.top_k(query, 10, seen)
        assert found.size == 10 and np.unique(found).size == 10
        assert not np.isin(found, seen).any()
        np.testing.assert_allclose(scores, clustered.item_vectors[found] @ query, rtol=1e-5, atol=1e-6)
        assert np.all(np.diff(scores) <= 0)
        recalls.append(np.intersect1d(truth, found).size / 10)
    assert np.mean(recalls) >= 0.95, np.mean(recalls)


def test_over_fetching_widens_until_k_unseen_movies_are_found(clustered, built):
    """A user who has seen their 1,500 best movies still gets exactly k unseen ones."""
    backend = _backend(clustered, built)
    exact = BruteForce(clustered.item_vectors)
    query = clustered.user_vectors[0]
    best, _ = exact.top_k(query, 1500)
    seen = np.sort(best).astype(np.int32)
    found, _ = backend.top_k(query, 50, seen)
    assert found.size == 50 and np.unique(found).size == 50 and not np.isin(found, seen).any()
    everything_but_three = np.setdiff1d(np.arange(20_000), [5, 77, 19_999]).astype(np.int32)
    found, _ = backend.top_k(query, 10, everything_but_three)
    assert sorted(found.tolist()) == [5, 77, 19_999]


def test_batched_rankings_match_the_live_path(clustered, built):
    backend = _backend(clustered, built)
    catalogue = ServingCatalogue.from_artifact(clustered)
    rankings = Rankings.compute(catalogue, backend)
    assert rankings.num_users == clustered.num_users
    retriever = Retriever(catalogue, backend, rankings=rankings)
    for user in range(0, clustered.num_users, 37):
        user_id = clustered.user_ids[user]
        cached = retriever.recommend(user_id, 20)
        live = retriever.recommend_live(user, 20)
        assert [s.movie_id for s in cached.items] == [s.movie_id for s in live.items]
        assert [s.score for s in cached.items] == [s.score for s in live.items]
    movie, answer = retriever.similar_items(int(clustered.movie_ids[10]), 10)
    similar = answer.items
    assert movie.movie_id == clustered.movie_ids[10] and len(similar) == 10
    assert movie.movie_id not in [s.movie_id for s in similar]


def test_ranking_budget_covers_the_most_active_users_first():
    art = tiny_artifact(users=50, items=40)
    catalogue = ServingCatalogue.from_artifact(art)
    budget = Rankings.bytes_per_user(40) * 10
    rankings = Rankings.compute(catalogue, BruteForce(art.item_vectors), budget)
    assert rankings.num_users == 10 and (rankings.rows >= 0).sum() == 10
    activity = np.diff(catalogue.seen_indptr)
    assert activity[rankings.rows >= 0].min() >= activity[rankings.rows < 0].max()
    retriever = Retriever(catalogue, BruteForce(art.item_vectors), rankings=rankings)
    full = Retriever(art)
    for user_id in art.user_ids:  # ranked or live, the answer is the same
        assert retriever.recommend(user_id, 10) == full.recommend(user_id, 10)


def test_an_index_that_does_not_match_the_model_is_refused(clustered, built):
    index, params = built
    data = ann_index.serialize(index)
    with pytest.raises(ArtifactError, match="holds 20000 vectors"):
        ann_index.deserialize(data, params, 19_999, 64)
    with pytest.raises(ArtifactError, match="does not match metadata"):
        ann_index.deserialize(data, dataclasses.replace(params, nlist=256), 20_000, 64)
    with pytest.raises(ArtifactError, match="not a readable faiss index"):
        ann_index.deserialize(data[: len(data) // 2], params, 20_000, 64)
    with pytest.raises(ArtifactError, match="unknown retrieval backend"):
        ann_index.IndexParams.from_metadata({"backend": "scann"})


def test_small_catalogues_stay_exact():
    art = tiny_artifact()
    files, retrieval = ann_index.files_for_version(art.item_vectors, art.user_vectors)
    assert files == {} and retrieval == {"backend": "exact"}
    files, retrieval = ann_index.files_for_version(art.item_vectors, art.user_vectors, min_items=10)
    assert set(files) == {ann_index.INDEX_FILE} and retrieval["backend"] == "faiss"
