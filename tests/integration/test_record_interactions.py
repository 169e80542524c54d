"""RecordInteractions on real recommenders: durable, idempotent, all or nothing, a write under the token
rules, on SQLite and on a real PostgreSQL; and nothing acknowledged lost when the process is killed.

What was stored is read back with the store's own reader from this process (the file or the database),
never through the server that wrote it.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import threading

import grpc
import pytest

from clients import (
    AlreadyExists,
    ConfigurationError,
    FailedPrecondition,
    Interaction,
    InvalidArgument,
    RecommenderClient,
    Unauthenticated,
)
from clients.cli import main as cli
from movierec.v1 import recommender_pb2, recommender_pb2_grpc
from movierec_common.artifact import VersionMetadata
from movierec_common.event_store import open_store
from tests.artifacts import tiny_artifact
from tests.servers import ServerProcess, start_recommender
from trainer_service.publisher import publish

pytestmark = pytest.mark.slow

TOKEN = "record-token-0123456789abcdef"


def stored_rows(url: str) -> list:
    store = open_store(url)
    assert store is not None
    try:
        return store.read_after(0, 1_000_000)
    finally:
        store.close()


def event_ids(rows) -> list[str]:
    return [row.interaction.event_id for row in rows]


@pytest.fixture(scope="module")
def served_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("record") / "models"
    publish(str(root), tiny_artifact(), VersionMetadata(model_kind="test"))  # movies 101..130
    return root


def test_a_batch_is_stored_durably_once_and_all_or_nothing(served_root, tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    server = start_recommender(served_root, tmp_path, "--events", url)
    try:
        with RecommenderClient(server.address, timeout=10) as rc:
            rc.wait_until_serving(timeout=60)
            when = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
            batch = [Interaction("alice", 101, rating=4.5, occurred_at=when, event_id="e1"),
                     Interaction("1", 102, event_id="e2"),
                     Interaction("alice", 999_999, event_id="e3")]  # a movie the version does not know
            first = rc.record(batch)
            assert (first.stored, first.duplicates, first.unknown_movie_ids) == (3, 0, [999_999])
            rows = stored_rows(url)
            assert event_ids(rows) == ["e1", "e2", "e3"]
            assert [row.sequence for row in rows] == sorted(row.sequence for row in rows)
            assert first.watermark == rows[-1].sequence
            alice = rows[0].interaction
            assert (alice.user_id, alice.movie_id, alice.rating, alice.occurred_at) == ("alice", 101, 4.5,
                                                                                      when.timestamp())
            assert rows[1].interaction.rating is None and rows[1].interaction.occurred_at > when.timestamp()

            again = rc.record(batch[:2])  # an identical resend: nothing twice, and OK
            assert (again.stored, again.duplicates) == (0, 2)
            with pytest.raises(AlreadyExists, match=r"interactions\[1\].event_id 'e2' was stored before"):
                rc.record([Interaction("bob", 103, event_id="e4"), Interaction("1", 104, event_id="e2")])
            with pytest.raises(InvalidArgument, match=r"interactions\[1\].rating is 7.0"):
                rc.record([Interaction("bob", 103, event_id="e5"), Interaction("bob", 104, rating=7, event_id="e6")])
            with pytest.raises(InvalidArgument, match=r"interactions\[0\].user_id is empty"):
                rc.record([Interaction(" ", 103, event_id="e7")])
            with pytest.raises(InvalidArgument, match="1,001 interactions in one call; at most 1,000"):
                rc.record([Interaction("bob", 103) for _ in range(1001)])
            assert event_ids(stored_rows(url)) == ["e1", "e2", "e3"]  # nothing of the refused batches

            # The client chooses an id when none is given, once, and reports it; the CLI records one.
            chosen = rc.record(Interaction("carol", 104, rating=3))
            assert chosen.stored == 1 and len(chosen.event_ids) == 1 and chosen.event_ids[0]
            with pytest.raises(ConfigurationError, match="aware datetime"):
                rc.record(Interaction("carol", 104, occurred_at=dt.datetime(2024, 1, 1)))
        monkeypatch.setenv("MOVIEREC_RECOMMENDER", server.address)
        assert cli(["record", "dave", "105", "--rating", "4", "--event-id", "cli-1"]) == 0
        assert "event cli-1: stored" in capsys.readouterr().out
        assert cli(["record", "dave", "105", "--rating", "4", "--event-id", "cli-1"]) == 0
        assert "already stored" in capsys.readouterr().out
        last = stored_rows(url)[-1].interaction
        assert (last.event_id, last.user_id, last.movie_id, last.rating) == ("cli-1", "dave", 105, 4.0)
    finally:
        server.terminate()


def test_with_events_off_recording_is_a_failed_precondition_and_reads_still_serve(served_root, tmp_path):
    server = start_recommender(served_root, tmp_path, "--events", "none")
    try:
        with RecommenderClient(server.address, timeout=10) as rc:
            rc.wait_until_serving(timeout=60)
            with pytest.raises(FailedPrecondition, match="--events none"):
                rc.record(Interaction("1", 101))
            assert len(rc.recommend("1", k=3).items) == 3
    finally:
        server.terminate()


def test_recording_is_a_write_under_the_token_rules(served_root, tmp_path):
    """With tokens it needs one even without --require-token (reads stay open); beyond loopback without
    tokens it is refused while reads keep serving."""
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(TOKEN + "\n")
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    with_tokens = start_recommender(served_root, tmp_path, "--events", url, "--token-file", str(tokens))
    try:
        with RecommenderClient(with_tokens.address, timeout=10, token="") as anonymous:
            anonymous.wait_until_serving(timeout=60)
            assert len(anonymous.recommend("1", k=2).items) == 2
            with pytest.raises(Unauthenticated):
                anonymous.record(Interaction("1", 101, event_id="t1"))
        with RecommenderClient(with_tokens.address, timeout=10, token=TOKEN) as holder:
            assert holder.record(Interaction("1", 101, event_id="t1")).stored == 1
    finally:
        with_tokens.terminate()
    (tmp_path / "open").mkdir()
    arguments = ["--model-root", str(served_root), "--host", "0.0.0.0", "--events",
                 f"sqlite:///{tmp_path / 'open.sqlite'}"]
    wide_open = ServerProcess("recommender_service.server", arguments, tmp_path / "open" / "recommender.log").start(60)
    try:
        with RecommenderClient(f"127.0.0.1:{wide_open.port}", timeout=10, token="") as reader:
            reader.wait_until_serving(timeout=60)
            assert len(reader.recommend("1", k=2).items) == 2  # reads keep serving
        with grpc.insecure_channel(f"127.0.0.1:{wide_open.port}") as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.RecordInteractions(recommender_pb2.RecordInteractionsRequest(interactions=[
                    recommender_pb2.Interaction(event_id="w1", user_id="1", movie_id=101)]), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "configure tokens" in refused.value.details()
            assert stub.GetModelStatus(recommender_pb2.GetModelStatusRequest(), timeout=10).num_items == 30
    finally:
        wide_open.terminate()
    assert stored_rows(f"sqlite:///{tmp_path / 'open.sqlite'}") == []


KILL_ROUNDS = 2


def test_nothing_acknowledged_is_lost_when_the_recommender_is_killed_mid_ingestion(served_root, tmp_path):
    """kill -9 while four threads record, twice over one store (the second replica starts on what the first
    left); every acknowledged batch is in the store, and after resending everything with the same ids, each
    interaction is there exactly once."""
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    acknowledged: list[str] = []
    sent: list[list[Interaction]] = []
    lock = threading.Lock()

    for round_ in range(KILL_ROUNDS):
        (tmp_path / f"round{round_}").mkdir()
        server = start_recommender(served_root, tmp_path / f"round{round_}", "--events", url)
        stop = threading.Event()
        killed = threading.Event()
        target = len(acknowledged) + 4_000

        def ingest(worker: int, server=server, stop=stop, killed=killed, target=target, round_=round_) -> None:
            with RecommenderClient(server.address, timeout=5) as rc:
                for n in range(10_000):
                    if stop.is_set():
                        return
                    batch = [Interaction(str(n % 20 + 1), 101 + (n + i) % 30, event_id=f"r{round_}-w{worker}-{n}-{i}")
                             for i in range(25)]
                    with lock:
                        sent.append(batch)
                    try:
                        rc.record(batch)
                    except Exception:  # the process is gone: calls fail from here on
                        if killed.is_set():
                            return
                        raise
                    with lock:
                        acknowledged.extend(i.event_id for i in batch)
                        if len(acknowledged) >= target and not killed.is_set():
                            killed.set()
                            os.kill(server.process.pid, signal.SIGKILL)

        with RecommenderClient(server.address, timeout=10) as rc:
            rc.wait_until_serving(timeout=60)
        workers = [threading.Thread(target=ingest, args=(w,)) for w in range(4)]
        for worker in workers:
            worker.start()
        assert killed.wait(timeout=120), f"round {round_}: the ingestion never reached {target:,} acknowledged"
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
        server.process.wait(timeout=30)
        stored = set(event_ids(stored_rows(url)))
        assert set(acknowledged) <= stored, f"{len(set(acknowledged) - stored)} acknowledged interactions lost"

    (tmp_path / "again").mkdir()
    restarted = start_recommender(served_root, tmp_path / "again", "--events", url)
    try:
        with RecommenderClient(restarted.address, timeout=30) as rc:
            for batch in sent:  # the client resends everything, acknowledged or not
                rc.record(batch)
    finally:
        restarted.terminate()
    rows = event_ids(stored_rows(url))
    assert len(rows) == len(set(rows)) == sum(len(batch) for batch in sent)
    print(f"\nkill -9 x{KILL_ROUNDS}: {len(acknowledged):,} acknowledged, all stored; {len(rows):,} stored once each "
          f"after the resend")


def test_replicas_share_one_postgresql(served_root, tmp_path, postgres_url):
    replicas = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            replicas.append(start_recommender(served_root, tmp_path / name, "--events", postgres_url))
        with RecommenderClient(replicas[0].address, timeout=10) as a, \
                RecommenderClient(replicas[1].address, timeout=10) as b:
            a.wait_until_serving(timeout=60)
            b.wait_until_serving(timeout=60)
            first = a.record([Interaction("1", 101, event_id="pg-1"), Interaction("2", 102, event_id="pg-2")])
            second = b.record([Interaction("1", 101, event_id="pg-1"), Interaction("3", 103, event_id="pg-3")])
            assert (first.stored, second.stored, second.duplicates) == (2, 1, 1)
            assert second.watermark > first.watermark
            with pytest.raises(AlreadyExists):
                b.record(Interaction("9", 101, event_id="pg-2"))
        assert event_ids(stored_rows(postgres_url)) == ["pg-1", "pg-2", "pg-3"]
    finally:
        for replica in replicas:
            replica.terminate()
