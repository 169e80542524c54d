"""Fresh answers at once, through real recommenders: what a user did counts in the next answer on the
replica that recorded it (read your writes), on other replicas once they follow the store, for known
users and visitors, without counting twice what a version was trained on, and from memory while the
store is down; each answer carries a recommendation id and the online hit rate follows.

Expected answers are ranked by hand with ``tests.session_reference`` (the documented session rules
written independently of ``QueryEncoder``): a fresh history must answer exactly as a session of the same
movies would.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from clients import Interaction, RecommenderClient
from movierec.v1 import recommender_pb2, recommender_pb2_grpc
from movierec_common.artifact import InteractionsRecord, VersionMetadata, write_version
from movierec_common.event_store import open_store
from movierec_common.model_root import TMP_PREFIX
from tests.integration.test_sessions import blended
from tests.servers import start_recommender
from tests.session_reference import known_user_query, visitor_query
from tests.unit.test_sessions import ranked
from tests.waiting import until, wait_for_version

pytestmark = pytest.mark.slow

ART, ENCODER = blended()
DESCRIPTION = ENCODER.to_json()
IDS = ART.movie_ids


def publish(root, version: int, interactions: InteractionsRecord | None = None) -> None:
    staging = root / f"{TMP_PREFIX}{version}-test"
    write_version(str(staging), ART, VersionMetadata(model_kind="test", query_encoder=DESCRIPTION,
                                                     interactions=interactions))
    staging.rename(root / str(version))


def expected_for(user: int, fresh: list[int], k: int = 10) -> list[int]:
    """A known user's answer with ``fresh`` (item indices, oldest first) as the newest part of their history."""
    seen = ART.seen_indices[ART.seen_indptr[user]:ART.seen_indptr[user + 1]]
    query = known_user_query(DESCRIPTION, ART.user_vectors[user], seen, fresh, ART.item_vectors)
    return IDS[ranked(ART.item_vectors @ query, set(seen.tolist()) | set(fresh), k)].tolist()


def expected_for_visitor(fresh: list[int], k: int = 10) -> list[int]:
    query = visitor_query(DESCRIPTION, fresh, ART.item_vectors)
    return IDS[ranked(ART.item_vectors @ query, set(fresh), k)].tolist()


def movies(answer) -> list[int]:
    return [item.movie_id for item in answer.items]


def did(user: str, index: int, event_id: str) -> Interaction:
    return Interaction(user, int(IDS[index]), event_id=event_id)


@pytest.fixture
def root(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    publish(models, 1)
    return models


def test_one_replica_reads_its_writes_and_a_new_version_takes_over(root, tmp_path):
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    server = start_recommender(root, tmp_path, "--events", url)
    user, name = 4, ART.user_ids[4]
    try:
        with RecommenderClient(server.address, timeout=10) as rc:
            rc.wait_until_serving(timeout=60)
            stub = recommender_pb2_grpc.RecommenderStub(rc._channel)
            assert movies(rc.recommend(name)) == expected_for(user, [])

            rc.record([did(name, 11, "a1"), did(name, 40, "a2")])
            assert movies(rc.recommend(name)) == expected_for(user, [11, 40])  # at once: no wait, no poll
            rc.record(did(name, 2, "a3"))
            assert movies(rc.recommend(name)) == expected_for(user, [11, 40, 2])
            batch = rc.recommend_batch([name, ART.user_ids[5]], k=10)
            assert movies(batch.results[0]) == expected_for(user, [11, 40, 2])
            assert movies(batch.results[1]) == expected_for(5, [])

            # A visitor the version never saw: personal from their first known interaction.
            assert rc.recommend("alice").cold_start
            rc.record([did("alice", 7, "v1"), Interaction("alice", 999_999, event_id="v2"), did("alice", 30, "v3")])
            visitor = rc.recommend("alice")
            assert not visitor.cold_start and movies(visitor) == expected_for_visitor([7, 30])
            assert visitor.unknown_movie_ids == []  # the caller did not send 999999 in this call

            # Every answer has an id of its own, and the online hit rate judges it.
            first = stub.Recommend(recommender_pb2.RecommendRequest(user_id="alice", k=10), timeout=10)
            again = stub.Recommend(recommender_pb2.RecommendRequest(user_id="alice", k=10), timeout=10)
            assert first.recommendation_id and again.recommendation_id != first.recommendation_id
            assert first.recommendation_id.startswith("1-")
            assert rc.recommend("alice").recommendation_id.startswith("1-")  # through the client too
            batch_ids = [r.recommendation_id for r in batch.results]
            assert all(batch_ids) and len(set(batch_ids)) == len(batch_ids)  # one per user's answer
            cited = recommender_pb2.Interaction(event_id="v4", user_id="alice", movie_id=first.items[3].movie_id,
                                                recommendation_id=first.recommendation_id)
            stub.RecordInteractions(recommender_pb2.RecordInteractionsRequest(interactions=[cited]), timeout=10)
            status = rc.model_status()
            # The three answers alice got after v3 hold that movie: each is a hit (her cold start answer, made
            # before v1, can only be a hit or still open: four of her next ten interactions have happened).
            assert status.online_judged >= 3 and status.online_hit_rate == 1.0
            assert status.events_store.endswith("events.sqlite") and status.events_problem == ""
            assert status.fresh_users == 2 and status.fresh_interactions == 7

            # Version 2 was trained on the store up to a3: only what came after counts as fresh.
            store = open_store(url)
            assert store is not None
            a3 = [row.sequence for row in store.read_after(0, 100) if row.interaction.event_id == "a3"][0]
            publish(root, 2, InteractionsRecord(store_id=store.store_id, watermark=a3))
            store.close()
            wait_for_version(rc, 2)
            assert movies(rc.recommend(name)) == expected_for(user, [])
            alice_fresh = [7, 30, int(np.flatnonzero(IDS == first.items[3].movie_id)[0])]
            assert movies(rc.recommend("alice")) == expected_for_visitor(alice_fresh)  # all after the watermark
    finally:
        server.terminate()
    # A restarted replica reads what came after its version's watermark, and nothing before it.
    server = start_recommender(root, tmp_path, "--events", url)
    try:
        with RecommenderClient(server.address, timeout=10) as rc:
            rc.wait_until_serving(timeout=60)
            wait_for_version(rc, 2)
            until(lambda: movies(rc.recommend("alice")) == expected_for_visitor(alice_fresh), 10,
                  "the restarted replica reads the interactions after its version's watermark")
            assert movies(rc.recommend(name)) == expected_for(user, [])
    finally:
        server.terminate()
    store = open_store(url)
    assert store is not None
    try:
        assert store.online_outcomes()[1].hits >= 3  # the first replica reported its totals as it stopped
    finally:
        store.close()


def test_replicas_follow_one_postgresql_and_answer_from_memory_while_it_is_down(root, tmp_path, postgres_server,
                                                                                 postgres_url):
    for n in range(2):
        (tmp_path / f"replica{n}").mkdir()
    servers = [start_recommender(root, tmp_path / f"replica{n}", "--events", postgres_url) for n in range(2)]
    user, name = 9, ART.user_ids[9]
    try:
        with RecommenderClient(servers[0].address, timeout=10) as writer, \
                RecommenderClient(servers[1].address, timeout=10) as reader:
            writer.wait_until_serving(timeout=60)
            reader.wait_until_serving(timeout=60)
            fresh = expected_for(user, [5, 17])
            assert movies(reader.recommend(name)) != fresh
            writer.record([did(name, 5, "p1"), did(name, 17, "p2")])
            acknowledged = time.monotonic()
            until(lambda: movies(reader.recommend(name)) == fresh, 10, "the other replica follows the store")
            print(f"\nfollowed by the other replica after {time.monotonic() - acknowledged:.2f} s")

            # Ingest while the database goes down and comes back: every acknowledged batch stays stored.
            stub = recommender_pb2_grpc.RecommenderStub(grpc.insecure_channel(servers[0].address,
                                                                              options=[("grpc.enable_retries", 0)]))
            acknowledged_ids: list[str] = []
            refused: list[grpc.StatusCode] = []
            stop = threading.Event()

            def ingest() -> None:
                n = 0
                while not stop.is_set():
                    batch = [recommender_pb2.Interaction(event_id=f"q{n}-{i}", user_id=f"load{i % 7}",
                                                         movie_id=int(IDS[i % 60])) for i in range(20)]
                    try:
                        stub.RecordInteractions(recommender_pb2.RecordInteractionsRequest(interactions=batch),
                                                timeout=15)
                        acknowledged_ids.extend(i.event_id for i in batch)
                    except grpc.RpcError as error:
                        refused.append(error.code())
                    n += 1

            thread = threading.Thread(target=ingest)
            thread.start()
            until(lambda: len(acknowledged_ids) >= 200, 30, "ingestion under way")
            postgres_server.stop()
            until(lambda: refused, 30, "a write refused while the database is down")
            assert set(refused) == {grpc.StatusCode.UNAVAILABLE}, refused
            # Answers keep coming, fresh histories included, on both replicas.
            assert movies(reader.recommend(name)) == fresh
            assert movies(writer.recommend(name)) == fresh
            until(lambda: reader.model_status() and stub.GetModelStatus(
                recommender_pb2.GetModelStatusRequest(), timeout=5).events_problem, 15,
                "the replica says the store cannot be read")
            postgres_server.start()
            before = len(acknowledged_ids)
            until(lambda: len(acknowledged_ids) > before + 100, 60, "writes acknowledged again once it is back")
            stop.set()
            thread.join(30)
    finally:
        for server in servers:
            server.terminate()
    store = open_store(postgres_url)
    assert store is not None
    try:
        stored = [row.interaction.event_id for row in store.read_after(0, 10_000_000)]
    finally:
        store.close()
    assert set(acknowledged_ids) <= set(stored), "an acknowledged interaction was lost"
    assert len(stored) == len(set(stored))
    print(f"PostgreSQL restart: {len(acknowledged_ids)} interactions acknowledged, all stored; "
          f"{len(refused)} calls refused UNAVAILABLE while it was down")
