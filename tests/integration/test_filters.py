"""Filters end to end: real recommenders answer filtered Recommend (sessions included), RecommendBatch
and SimilarItems calls over gRPC, on an exact version and on a version forced onto the faiss index, and every answer is
checked against a brute force over the artifact's own arrays.

The oracle works movie by movie from the genre and year arrays this test made (plain numpy on the
test's arrays, never ``MovieMetadata.matching`` or ``movie_filter``), so a slip in the filter code
cannot agree with itself. The exact backend must give the oracle's answer item for item (ties to the
lower movie index); the faiss one must hold only passing movies, exactly min(k, eligible) of them,
and recall the oracle's top 10.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients import RecommenderClient
from movierec.v1 import recommender_pb2, recommender_pb2_grpc
from movierec_common import ann_index, movie_metadata
from movierec_common.artifact import ModelArtifact, VersionMetadata
from movierec_common.session_query import POOLED, Part, QueryEncoder
from tests.artifacts import clustered_artifact, tiny_artifact
from tests.servers import start_recommender
from trainer_service.publisher import publish

pytestmark = pytest.mark.slow

K = 10
GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Western", "Noir")


def synthetic_facts(art: ModelArtifact, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(genre bits uint64, years int16) that follow the item clusters: a genre removes whole regions of
    the vector space, as real genres do. Clusters are recovered by rounding the item's nearest of a few
    random directions, enough to make genres correlate with position."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(24, art.item_vectors.shape[1])).astype(np.float32)
    region = np.argmax(art.item_vectors @ directions.T, axis=1)
    primary = rng.integers(0, len(GENRES), size=(24, 2))
    bits = np.zeros(art.num_items, dtype=np.uint64)
    for g in range(len(GENRES)):
        has = (rng.random(art.num_items) < 0.03) | (
            ((primary[region, 0] == g) | (primary[region, 1] == g)) & (rng.random(art.num_items) < 0.85))
        bits[has] |= np.uint64(1 << g)
    years = rng.integers(1950, 2021, size=art.num_items).astype(np.int16)
    years[rng.random(art.num_items) < 0.05] = 0
    return bits, years


def facts_files(bits: np.ndarray, years: np.ndarray) -> tuple[dict[str, bytes], object]:
    return movie_metadata.files_for_version(movie_metadata.MovieMetadata.build(GENRES, bits, years))


class Oracle:
    """Brute force over the artifact: every movie scored, conditions tested one by one."""

    def __init__(self, art: ModelArtifact, bits: np.ndarray, years: np.ndarray):
        self.art, self.bits, self.years = art, bits, years
        self.index_of = {int(m): i for i, m in enumerate(art.movie_ids)}
        self.users = {u: i for i, u in enumerate(art.user_ids.tolist())}
        self._allowed: dict[bytes, np.ndarray] = {}

    def genre_set(self, i: int) -> set[str]:
        return {name for g, name in enumerate(GENRES) if int(self.bits[i]) >> g & 1}

    def passes(self, f: recommender_pb2.Filter, i: int, excluded: set[int], only: set[int]) -> bool:
        movie_id, genres, year = int(self.art.movie_ids[i]), self.genre_set(i), int(self.years[i])
        if movie_id in excluded:
            return False
        if only and movie_id not in only:
            return False
        if f.genres_any and not genres & set(f.genres_any):
            return False
        if not set(f.genres_all) <= genres or genres & set(f.exclude_genres):
            return False
        if f.min_year or f.max_year:
            if year == 0 or (f.min_year and year < f.min_year) or (f.max_year and year > f.max_year):
                return False
        return True

    def allowed(self, f: recommender_pb2.Filter) -> np.ndarray:
        key = f.SerializeToString(deterministic=True)
        if key not in self._allowed:
            excluded, only = set(f.exclude_movie_ids), set(f.only_movie_ids)
            self._allowed[key] = np.array([self.passes(f, i, excluded, only) for i in range(self.art.num_items)])
        return self._allowed[key].copy()

    def seen(self, user: int) -> np.ndarray:
        return self.art.seen_indices[self.art.seen_indptr[user]:self.art.seen_indptr[user + 1]]

    def ranked(self, scores: np.ndarray, allowed: np.ndarray, k: int) -> tuple[list[int], int]:
        """(movie ids of the k best allowed, best first, ties to the lower index; how many were allowed)."""
        candidates = np.flatnonzero(allowed)
        order = candidates[np.lexsort((candidates, -scores[candidates]))]
        return self.art.movie_ids[order[:k]].tolist(), int(candidates.size)

    def recommend(self, user_id: str, f: recommender_pb2.Filter, k: int = K, exclude_seen: bool = True):
        allowed = self.allowed(f)
        user = self.users.get(user_id)
        if user is None:  # cold start: popularity, ties to the lower index
            return self.ranked(self.art.popularity.astype(np.float64), allowed, k)
        if exclude_seen:
            allowed[self.seen(user)] = False
        return self.ranked(self.art.item_vectors @ self.art.user_vectors[user], allowed, k)

    def session(self, user_id: str, recent_ids: list[int], f: recommender_pb2.Filter, k: int = K):
        """The version's session rule (one pooled part, no decay, no centring): a visitor's query is the mean
        of the recent movies' vectors; a known user's is (1 - m) x their vector + m x that mean, m the recent
        movies' share of the whole history. Seen and recent movies are left out."""
        recent = list(dict.fromkeys(self.index_of[m] for m in recent_ids))
        pooled = self.art.item_vectors[recent].astype(np.float64).mean(axis=0)
        allowed = self.allowed(f)
        allowed[recent] = False
        user = self.users.get(user_id)
        if user is None:
            query = pooled
        else:
            seen = set(self.seen(user).tolist())
            share = len(recent) / len(seen | set(recent))
            query = (1 - share) * self.art.user_vectors[user].astype(np.float64) + share * pooled
            allowed[list(seen)] = False
        return self.ranked(self.art.item_vectors.astype(np.float64) @ query, allowed, k)

    def similar(self, movie_id: int, f: recommender_pb2.Filter, k: int = K):
        i = self.index_of[movie_id]
        vectors = self.art.item_vectors.astype(np.float64)
        norms = np.linalg.norm(vectors, axis=1)
        cosine = (vectors @ vectors[i]) / (norms * norms[i])
        allowed = self.allowed(f)
        allowed[i] = False
        return self.ranked(cosine, allowed, k)


def _stub(address: str) -> tuple[grpc.Channel, recommender_pb2_grpc.RecommenderStub]:
    channel = grpc.insecure_channel(address)
    return channel, recommender_pb2_grpc.RecommenderStub(channel)


@pytest.fixture(scope="module")
def filter_stack(tmp_path_factory):
    """One catalogue served twice: exactly (below the index threshold) and through a faiss index."""
    base = tmp_path_factory.mktemp("filters")
    art = clustered_artifact(users=200, items=4_000, dim=16, seed=21)
    art = dataclasses.replace(art, popularity=np.round(art.popularity / 4))  # ties in the popularity list
    bits, years = synthetic_facts(art)
    files, record = facts_files(bits, years)
    exact_root, ann_root = base / "exact", base / "ann"
    sessions = QueryEncoder((Part(POOLED, art.user_vectors.shape[1]),)).to_json()  # the mean of the movies
    publish(str(exact_root), art, VersionMetadata(model_kind="synthetic", movies=record, query_encoder=sessions),
            files)
    index_files, retrieval = ann_index.files_for_version(art.item_vectors, art.user_vectors, min_items=1_000)
    assert retrieval["backend"] == "faiss"
    publish(str(ann_root), art, VersionMetadata(model_kind="synthetic", retrieval=retrieval, movies=record,
                                                query_encoder=sessions), {**files, **index_files})
    for logs in ("exact-logs", "ann-logs"):
        (base / logs).mkdir()
    servers = [start_recommender(exact_root, base / "exact-logs"), start_recommender(ann_root, base / "ann-logs")]
    channels = []
    try:
        stubs = {}
        for name, server in zip(("exact", "faiss"), servers, strict=True):
            with RecommenderClient(server.address, timeout=30) as rc:
                rc.wait_until_serving(timeout=120)
            channel, stub = _stub(server.address)
            channels.append(channel)
            stubs[name] = stub
        yield {"oracle": Oracle(art, bits, years), "stubs": stubs, "art": art}
    finally:
        for channel in channels:
            channel.close()
        for server in servers:
            server.terminate()


def filter_classes(art: ModelArtifact, rng: np.random.Generator) -> dict[str, recommender_pb2.Filter]:
    ids = art.movie_ids
    return {
        "genre": recommender_pb2.Filter(genres_any=["Horror"]),
        "two genres any": recommender_pb2.Filter(genres_any=["Comedy", "Western"]),
        "two genres all": recommender_pb2.Filter(genres_all=["Action", "Drama"]),
        "exclude genre": recommender_pb2.Filter(exclude_genres=["Drama", "Comedy"]),
        "years": recommender_pb2.Filter(min_year=1990, max_year=1999),
        "from a year": recommender_pb2.Filter(min_year=2015),
        "only 300": recommender_pb2.Filter(only_movie_ids=rng.choice(ids, 300, replace=False).tolist()),
        "exclude 1,500": recommender_pb2.Filter(exclude_movie_ids=rng.choice(ids, 1_500, replace=False).tolist()),
        "everything at once": recommender_pb2.Filter(
            genres_any=["Sci-Fi", "Romance"], exclude_genres=["Noir"], min_year=1960,
            exclude_movie_ids=rng.choice(ids, 200, replace=False).tolist(),
            only_movie_ids=rng.choice(ids, 2_500, replace=False).tolist()),
    }


def _ids(items) -> list[int]:
    return [item.movie_id for item in items]


def _check(backend: str, got_ids: list[int], want_ids: list[int], eligible: int, got_eligible: int,
           allowed: set[int], k: int = K) -> float:
    """Every movie passes, exactly min(k, eligible) come back, the eligible count is right; returns recall."""
    assert got_eligible == eligible
    assert len(got_ids) == min(k, eligible) == len(set(got_ids))
    assert set(got_ids) <= allowed, set(got_ids) - allowed
    if backend == "exact":
        assert got_ids == want_ids
    return len(set(got_ids) & set(want_ids)) / max(1, len(want_ids))


@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_filtered_answers_match_a_brute_force_over_the_artifact(filter_stack, backend):
    oracle, stub, art = filter_stack["oracle"], filter_stack["stubs"][backend], filter_stack["art"]
    rng = np.random.default_rng(5)
    users = [str(u) for u in rng.choice(np.arange(1, art.num_users + 1), 12, replace=False)]
    recalls = []
    for f in filter_classes(art, rng).values():
        allowed_all = set(art.movie_ids[oracle.allowed(f)].tolist())
        for user in users:
            for k, exclude_seen in ((K, True), (150, True), (K, False)):
                answer = stub.Recommend(recommender_pb2.RecommendRequest(user_id=user, k=k, filter=f,
                                                                         exclude_seen=exclude_seen))
                want, eligible = oracle.recommend(user, f, k, exclude_seen)
                recall = _check(backend, _ids(answer.items), want, eligible, answer.eligible_movies, allowed_all, k)
                recalls.append(recall)
        batch = stub.RecommendBatch(recommender_pb2.RecommendBatchRequest(user_ids=[*users[:4], "a-stranger"],
                                                                          k=K, filter=f))
        for result in batch.results:
            want, eligible = oracle.recommend(result.user_id, f)
            recalls.append(_check(backend, _ids(result.items), want, eligible, result.eligible_movies, allowed_all))
            assert result.cold_start == (result.user_id == "a-stranger")
        for user_id in (users[0], "a-visitor"):
            recent = rng.choice(art.movie_ids, 5, replace=False).tolist()
            session = stub.Recommend(recommender_pb2.RecommendRequest(user_id=user_id, k=K, filter=f,
                                                                      recent_movie_ids=recent))
            want, eligible = oracle.session(user_id, recent, f)
            assert not session.cold_start
            recalls.append(_check(backend, _ids(session.items), want, eligible, session.eligible_movies,
                                  allowed_all - set(recent)))
        for movie_id in rng.choice(art.movie_ids, 4, replace=False).tolist():
            similar = stub.SimilarItems(recommender_pb2.SimilarItemsRequest(movie_id=movie_id, k=K, filter=f))
            want, eligible = oracle.similar(movie_id, f)
            recalls.append(_check(backend, _ids(similar.items), want, eligible, similar.eligible_movies,
                                  allowed_all - {movie_id}))
    assert np.mean(recalls) >= 0.95, np.mean(recalls)


@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_fewer_pass_than_k_and_unknown_ids_are_reported_not_padded(filter_stack, backend):
    oracle, stub, art = filter_stack["oracle"], filter_stack["stubs"][backend], filter_stack["art"]
    user = "1"
    seen = art.movie_ids[oracle.seen(0)].tolist()
    unseen = [m for m in art.movie_ids.tolist() if m not in set(seen)]
    only = [*seen[:3], *unseen[:4], 999_999_991, 999_999_992]  # 3 seen, 4 unseen, 2 unknown
    f = recommender_pb2.Filter(only_movie_ids=only, exclude_movie_ids=[unseen[0], 999_999_993])
    answer = stub.Recommend(recommender_pb2.RecommendRequest(user_id=user, k=K, filter=f))
    assert sorted(_ids(answer.items)) == sorted(unseen[1:4]) and answer.eligible_movies == 3
    assert list(answer.unknown_movie_ids) == [999_999_993, 999_999_991, 999_999_992]
    everything = stub.Recommend(recommender_pb2.RecommendRequest(user_id=user, k=K, filter=f, exclude_seen=False))
    assert sorted(_ids(everything.items)) == sorted([*seen[:3], *unseen[1:4]]) and everything.eligible_movies == 6
    nothing = stub.Recommend(recommender_pb2.RecommendRequest(
        user_id=user, k=K, filter=recommender_pb2.Filter(genres_all=["Action"], exclude_genres=["Action"])))
    assert list(nothing.items) == [] and nothing.eligible_movies == 0
    batch = stub.RecommendBatch(recommender_pb2.RecommendBatchRequest(user_ids=[user], k=K, filter=f))
    assert list(batch.unknown_movie_ids) == [999_999_993, 999_999_991, 999_999_992]
    similar = stub.SimilarItems(recommender_pb2.SimilarItemsRequest(movie_id=unseen[5], k=K, filter=f))
    assert sorted(_ids(similar.items)) == sorted([*seen[:3], *unseen[1:4]]) and similar.eligible_movies == 6
    assert list(similar.unknown_movie_ids) == [999_999_993, 999_999_991, 999_999_992]


def test_bad_filters_get_invalid_argument_with_the_numbers(filter_stack):
    stub = filter_stack["stubs"]["exact"]
    cases = {
        "genres_any: this model version has no genre 'Musical'; its genres are: Action, Comedy":
            recommender_pb2.Filter(genres_any=["Musical"]),
        "exclude_movie_ids holds 10,001 ids; at most 10,000": recommender_pb2.Filter(
            exclude_movie_ids=list(range(10_001))),
        "only_movie_ids holds 100,001 ids; at most 100,000": recommender_pb2.Filter(
            only_movie_ids=list(range(100_001))),
        "min_year 2000 is after filter.max_year 1990": recommender_pb2.Filter(min_year=2000, max_year=1990),
        "max_year is -3": recommender_pb2.Filter(max_year=-3),
    }
    for message, f in cases.items():
        for call, request in ((stub.Recommend, recommender_pb2.RecommendRequest(user_id="1", k=K, filter=f)),
                              (stub.SimilarItems, recommender_pb2.SimilarItemsRequest(movie_id=7, k=K, filter=f)),
                              (stub.RecommendBatch, recommender_pb2.RecommendBatchRequest(user_ids=["1"], k=K,
                                                                                          filter=f))):
            with pytest.raises(grpc.RpcError) as caught:
                call(request)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in caught.value.details(), caught.value.details()


def test_a_version_without_metadata_refuses_genre_and_year_conditions_but_keeps_id_conditions(tmp_path: Path):
    art = tiny_artifact(items=40)
    publish(str(tmp_path / "models"), art, VersionMetadata(model_kind="synthetic"))  # no movie metadata
    server = start_recommender(tmp_path / "models", tmp_path)
    try:
        with RecommenderClient(server.address, timeout=30) as rc:
            rc.wait_until_serving(timeout=120)
        channel, stub = _stub(server.address)
        with channel:
            for f in (recommender_pb2.Filter(genres_any=["Drama"]), recommender_pb2.Filter(min_year=1990)):
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Recommend(recommender_pb2.RecommendRequest(user_id="1", k=K, filter=f))
                assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert "model version 1 was published before movie metadata" in caught.value.details()
            keep = art.movie_ids[:6].tolist()
            answer = stub.Recommend(recommender_pb2.RecommendRequest(
                user_id="stranger", k=K, filter=recommender_pb2.Filter(only_movie_ids=keep,
                                                                      exclude_movie_ids=keep[:2])))
            assert sorted(_ids(answer.items)) == keep[2:] and answer.eligible_movies == 4
    finally:
        server.terminate()
