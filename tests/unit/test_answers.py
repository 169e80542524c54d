"""The served version's answers, kept for the calls that repeat them (recommender_service.answers):
bounded in bytes, least recently used out first, and only answers worth keeping."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from movierec.v1 import recommender_pb2
from movierec_common.artifact import VersionMetadata
from movierec_common.session_query import pooled_encoder
from recommender_service.answers import MAX_CACHED_K, AnswerCache, ServedAnswers, entry_bytes
from recommender_service.errors import SessionsUnsupported
from recommender_service.model import LoadedModel
from recommender_service.rankings import PRECOMPUTED_TOP
from recommender_service.retrieval import Recommendation, Retriever
from tests.artifacts import tiny_artifact


def response(items: int, title_bytes: int = 30, tag: int = 0) -> recommender_pb2.RecommendResponse:
    return recommender_pb2.RecommendResponse(model_version=1, items=[
        recommender_pb2.RecommendedItem(movie_id=100_000 + tag * 1000 + i, title="t".ljust(title_bytes, "x"),
                                        score=0.5 + i) for i in range(items)])


class Rendering:
    """The servicer's part, counted: turns a ranked answer into the caller's message."""

    def __init__(self):
        self.calls = 0

    def __call__(self, model: LoadedModel, result: Recommendation) -> recommender_pb2.RecommendResponse:
        self.calls += 1
        return recommender_pb2.RecommendResponse(
            model_version=model.version, cold_start=result.cold_start,
            items=[recommender_pb2.RecommendedItem(movie_id=s.movie_id, title=s.title, score=s.score)
                   for s in result.items])


def loaded(version: int, art, loaded_at: float = 0.0) -> LoadedModel:
    return LoadedModel(version=version, retriever=Retriever(art), metadata=VersionMetadata(), loaded_at=loaded_at)


def test_the_cache_is_bounded_in_bytes_and_evicts_the_least_recently_used():
    sizes = {name: entry_bytes(response(10, tag=n)) for n, name in enumerate("abcdef")}
    assert len(set(sizes.values())) == 1
    one = sizes["a"]
    cache = AnswerCache(budget_bytes=4 * one + one // 2)  # room for four entries, not five
    for n, name in enumerate("abcd"):
        cache.put(name, response(10, tag=n), one)
    assert len(cache) == 4 and cache.nbytes == 4 * one
    assert cache.get("a") is not None  # "a" is now the most recently used; "b" the least
    cache.put("e", response(10, tag=4), one)
    assert sorted(cache.keys()) == ["a", "c", "d", "e"] and cache.nbytes == 4 * one <= cache.budget_bytes
    cache.put("big", response(30, tag=5), 3 * one)  # needs the room of three entries: c, d and a go, in that order
    assert list(cache.keys()) == ["e", "big"] and cache.nbytes == 4 * one
    cache.put("huge", response(10), cache.budget_bytes + 1)  # larger than the whole budget: not kept at all
    assert list(cache.keys()) == ["e", "big"] and cache.nbytes == 4 * one
    cache.put("e", response(10), one)  # a key kept again replaces its entry, counted once, now the newest
    assert list(cache.keys()) == ["big", "e"] and cache.nbytes == 4 * one and len(cache) == 2


def test_an_entrys_estimate_is_what_holding_it_costs():
    """The estimate against the memory a fresh process grows by when it holds such answers in a dict,
    for short and long answers and titles: within 25% either way (measured: 3.2 KB for k=10, 11 KB for
    k=100, 94 KB for k=1000 with 30-byte titles, while the message's ByteSize is 0.4, 4.3 and 43 KB)."""
    probe = """
import gc, json, sys, psutil
from movierec.v1 import recommender_pb2 as pb
k, n, title = (int(a) for a in sys.argv[1:])
def make(i):
    return pb.RecommendResponse(model_version=3, items=[pb.RecommendedItem(
        movie_id=100000 + j + i, title=("T%d " % (i * k + j)).ljust(title, "x"), score=0.5 + j) for j in range(k)])
make(0); gc.collect()
before = psutil.Process().memory_info().rss
held = {(str(i), k, True): make(i) for i in range(n)}
gc.collect()
print(json.dumps((psutil.Process().memory_info().rss - before) / n))
"""
    for k, n, title in [(10, 20_000, 30), (100, 2_000, 30), (100, 2_000, 300), (1000, 300, 30)]:
        held = json.loads(subprocess.run([sys.executable, "-c", probe, str(k), str(n), str(title)], check=True,
                                         capture_output=True, text=True).stdout)
        estimate = entry_bytes(response(k, title))
        assert 0.75 * held <= estimate <= 1.25 * held, (k, title, held, estimate)


def test_unknown_users_and_deep_answers_are_never_kept():
    art = tiny_artifact()
    model, render = loaded(1, art), Rendering()
    served = ServedAnswers(budget_bytes=1 << 20)
    known = str(art.user_ids[3])
    assert MAX_CACHED_K == PRECOMPUTED_TOP  # the depth the rankings answer without a scan

    for n in range(5):
        served.recommend(model, f"nobody-{n}", 10, True, render)
    served.recommend(model, known, MAX_CACHED_K + 1, True, render)
    served.recommend(model, known, MAX_CACHED_K + 1, True, render)
    assert served.entries == 0 and render.calls == 7

    first = served.recommend(model, known, MAX_CACHED_K, True, render)
    assert served.recommend(model, known, MAX_CACHED_K, True, render) is first  # kept: the very same message
    assert served.recommend(model, known, 10, False, render) == render(model, model.retriever.recommend(known, 10,
                                                                                                        False))
    assert served.entries == 2 and served.nbytes == entry_bytes(first) + entry_bytes(
        served.recommend(model, known, 10, False, render))


def test_a_new_version_starts_empty_and_a_call_on_the_old_one_does_not_take_its_place():
    art = tiny_artifact()
    old, new, render = loaded(1, art, loaded_at=1.0), loaded(2, art, loaded_at=2.0), Rendering()
    served = ServedAnswers(budget_bytes=1 << 20)
    user = str(art.user_ids[0])
    assert served.recommend(old, user, 10, True, render).model_version == 1 and served.entries == 1
    assert served.recommend(new, user, 10, True, render).model_version == 2 and served.entries == 1
    # An in-flight call still on the old version is answered by it, and kept nowhere.
    assert served.recommend(old, str(art.user_ids[1]), 10, True, render).model_version == 1
    assert served.recommend(new, user, 10, True, render).model_version == 2
    assert served.entries == 1 and render.calls == 3


def test_sessions_are_never_kept():
    """The servicer sends sessions to the version itself (LoadedModel.recommend), which keeps none."""
    art = tiny_artifact()
    encoder = pooled_encoder(art.user_vectors, art.item_vectors, (art.seen_indptr, art.seen_indices))
    model = LoadedModel(version=1, retriever=Retriever(art, query_encoder=encoder), metadata=VersionMetadata(),
                        loaded_at=0.0)
    render = Rendering()
    recent = art.movie_ids[:3].tolist()
    first = model.recommend("visitor", 10, True, render, recent)
    second = model.recommend("visitor", 10, True, render, np.array(recent))
    assert first == second and render.calls == 2

    without_encoder = loaded(1, art)
    with pytest.raises(SessionsUnsupported):
        without_encoder.recommend("visitor", 10, True, render, recent)
