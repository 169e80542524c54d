"""Cost per caller on a real recommender: nobody degrades the service for others.

One server over a catalogue of 120,000 movies (64 dimensions, so a live scan of one user is a few ms)
whose 100 most popular movies have 321-byte titles, so that a batch of 1,000 unknown users with k = 100
(the largest the static limits allow) comes to just under the batch answer cap. It runs with a 256 KB
answer cache and /metrics, which the tests read to see what the server did.
"""

from __future__ import annotations

import dataclasses
import time

import grpc
import numpy as np
import pytest

from clients import InvalidArgument, RecommenderClient, ResourceExhausted
from movierec.v1 import recommender_pb2, recommender_pb2_grpc
from movierec_common.artifact import VersionMetadata
from tests.artifacts import tiny_artifact
from tests.servers import Scrape, free_port, start_recommender
from trainer_service.publisher import publish

pytestmark = pytest.mark.slow

ITEMS, USERS, LONG_TITLE = 120_000, 1000, 321
CACHE_MB = 0.25
BATCH = "RecommendBatch"
# The limits as the README states them (written out, not imported, so that a server drifting fails here).
MAX_BATCH_LIVE_SCORES = 100_000_000  # users answered by a live scan x movies, per RecommendBatch
MAX_BATCH_ANSWER_BYTES = 32 * 1024 * 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("costs")
    art = tiny_artifact(users=USERS, items=ITEMS, dim=64)
    popularity = art.popularity.copy()
    popularity[:100] = 1000 + np.arange(100, 0, -1)  # the first 100 movies are the most popular, in order
    titles = art.titles.copy()
    titles[:100] = [f"Movie {i} ".ljust(LONG_TITLE, "x") for i in range(100)]
    art = dataclasses.replace(art, popularity=popularity.astype(np.float32), titles=titles)
    publish(str(base / "models"), art, VersionMetadata(model_kind="good"))
    metrics_port = free_port()
    server = start_recommender(base / "models", base, "--metrics-port", str(metrics_port),
                               "--answer-cache-mb", str(CACHE_MB))
    channel = grpc.insecure_channel(server.address, options=[("grpc.enable_retries", 0)])
    try:
        with RecommenderClient(server.address, timeout=120) as rc:
            rc.wait_until_serving(timeout=120)
            yield {"art": art, "rc": rc, "stub": recommender_pb2_grpc.RecommenderStub(channel),
                   "metrics_port": metrics_port}
    finally:
        channel.close()
        server.terminate()


def _wait_for_handled(port: int, before: float, timeout: float = 60.0) -> Scrape:
    """The scrape in which the server has finished one more RecommendBatch handler than ``before``."""
    deadline = time.monotonic() + timeout
    while True:
        scrape = Scrape(port)
        if scrape.total("grpc_server_handled_total", grpc_method=BATCH) > before:
            return scrape
        assert time.monotonic() < deadline, "the server never finished the batch's handler"
        time.sleep(0.02)


def _live_batch(served, users: int) -> recommender_pb2.RecommendBatchRequest:
    return recommender_pb2.RecommendBatchRequest(user_ids=[str(u) for u in served["art"].user_ids[:users]], k=10,
                                                 exclude_seen=False)


def _handler_seconds(scrape: Scrape) -> float:
    return scrape.total("grpc_server_handling_seconds_sum", grpc_method=BATCH)


def _users_ranked(scrape: Scrape) -> float:
    assert "movierec_batch_users_ranked" in scrape.names  # a misspelt series would read 0
    return scrape("movierec_batch_users_ranked_total")


@pytest.fixture(scope="module")
def full_batch(served):
    """What the whole live batch of 800 users costs the server's handler, measured by its own /metrics."""
    port = served["metrics_port"]
    before = Scrape(port)
    served["stub"].RecommendBatch(_live_batch(served, 800), timeout=120)
    after = _wait_for_handled(port, before.total("grpc_server_handled_total", grpc_method=BATCH))
    seconds = _handler_seconds(after) - _handler_seconds(before)
    print(f"\nthe whole batch of 800 live users: {seconds:.2f} s in its handler")
    return seconds


@pytest.mark.parametrize("how", ["deadline", "cancel"])
def test_a_batch_stops_between_users_when_its_caller_is_gone(served, full_batch, how):
    """The server's handler ends early (its own handling time, well under the whole batch's) having
    ranked fewer users than asked: the work stopped, not just the answer."""
    port, stub = served["metrics_port"], served["stub"]
    before = Scrape(port)
    handled = before.total("grpc_server_handled_total", grpc_method=BATCH)
    if how == "deadline":
        with pytest.raises(grpc.RpcError) as caught:
            stub.RecommendBatch(_live_batch(served, 800), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        call = stub.RecommendBatch.future(_live_batch(served, 800), timeout=120)
        deadline = time.monotonic() + 30
        while Scrape(port).total("grpc_server_started_total", grpc_method=BATCH) <= before.total(
                "grpc_server_started_total", grpc_method=BATCH):
            assert time.monotonic() < deadline and not call.done(), "the batch never reached the server"
            time.sleep(0.01)
        assert call.cancel()
    after = _wait_for_handled(port, handled)
    seconds = _handler_seconds(after) - _handler_seconds(before)
    assert seconds < full_batch / 2, f"the handler ran {seconds:.2f} s of the whole batch's {full_batch:.2f} s"
    ranked = _users_ranked(after) - _users_ranked(before)
    assert ranked < 800, "every user was ranked for a caller that had gone"
    print(f"\n{how}: the handler stopped after {seconds:.2f} s and {ranked:.0f} of 800 users")


def test_live_scoring_beyond_the_per_call_limit_is_refused_with_the_numbers(served):
    rc, art = served["rc"], served["art"]
    users = art.user_ids.tolist()
    assert len(users) * ITEMS > MAX_BATCH_LIVE_SCORES >= 800 * ITEMS
    with pytest.raises(ResourceExhausted) as caught:
        rc.recommend_batch(users, k=10, exclude_seen=False)
    assert f"{len(users):,} users x {ITEMS:,} movies" in caught.value.details, caught.value.details
    assert f"{MAX_BATCH_LIVE_SCORES:,}" in caught.value.details
    # The static limits are checked first and keep their status.
    with pytest.raises(InvalidArgument, match="at most 1000 users"):
        rc.recommend_batch(users + ["1"], k=10, exclude_seen=False)
    with pytest.raises(InvalidArgument, match="users x k must be at most 100000"):
        rc.recommend_batch(users, k=101, exclude_seen=False)
    # The same users answered from the rankings computed at load cost no scan, and are answered.
    batch = rc.recommend_batch(users, k=10)
    assert len(batch.results) == len(users) and all(len(r.items) == 10 for r in batch.results)


def _answer_bytes(batch) -> int:
    """The answer's size on the wire, rebuilt from what the client received."""
    return recommender_pb2.RecommendBatchResponse(model_version=batch.model_version, results=[
        recommender_pb2.UserRecommendations(user_id=r.user_id, cold_start=r.cold_start, items=[
            recommender_pb2.RecommendedItem(movie_id=i.movie_id, title=i.title, score=i.score) for i in r.items])
        for r in batch.results]).ByteSize()


def test_the_largest_batch_answer_the_limits_allow_arrives_whole(served):
    """1,000 users x k = 100, every item a 321-byte title: 33,486,002 bytes, 8 times the 4 MB a gRPC
    client accepts by default, and within 70 KB of the cap."""
    users = [f"u{n:04d}" for n in range(1000)]
    batch = served["rc"].recommend_batch(users, k=100)
    assert [r.user_id for r in batch.results] == users
    assert all(len(r.items) == 100 and all(len(i.title) == LONG_TITLE for i in r.items) for r in batch.results)
    size = _answer_bytes(batch)
    assert 4 * 1024 * 1024 < MAX_BATCH_ANSWER_BYTES - 100_000 < size <= MAX_BATCH_ANSWER_BYTES, size
    print(f"\nthe largest batch answer: {size:,} bytes (cap {MAX_BATCH_ANSWER_BYTES:,})")


def test_a_batch_answer_over_the_cap_is_refused_with_the_numbers(served):
    """The same batch with 256-byte user ids (each repeated in its result) comes to ~250 KB more."""
    users = [f"u{n:04d}".ljust(256, "-") for n in range(1000)]
    with pytest.raises(ResourceExhausted) as caught:
        served["rc"].recommend_batch(users, k=100)
    details = caught.value.details
    assert f"at most {MAX_BATCH_ANSWER_BYTES:,} bytes" in details and "split the batch" in details, details


def test_the_answer_cache_keeps_only_known_users_within_its_budget(served):
    rc, port, art = served["rc"], served["metrics_port"], served["art"]
    known = [str(u) for u in art.user_ids]
    assert Scrape(port)("movierec_answer_cache_bytes") == 0 and "movierec_answer_cache_bytes" in Scrape(port).names
    for n in range(50):
        rc.recommend(f"nobody-{n}", k=10)
        rc.recommend(known[n], k=101)
    assert Scrape(port)("movierec_answer_cache_bytes") == 0  # unknown users and deep answers are not kept
    for user in known[:20]:
        rc.recommend(user, k=10)
    kept = Scrape(port)("movierec_answer_cache_bytes")
    assert 0 < kept <= CACHE_MB * 1024 * 1024
    for user in known:
        rc.recommend(user, k=100)  # ~11 KB each: far more than 256 KB in all
    assert 0.5 * CACHE_MB * 1024 * 1024 < Scrape(port)("movierec_answer_cache_bytes") <= CACHE_MB * 1024 * 1024
