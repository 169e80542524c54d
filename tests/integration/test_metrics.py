"""``/metrics`` of both servers, scraped over HTTP and parsed as Prometheus parses it.

One trainer and one recommender with ``--metrics-port``, one tiny model. Every
check is a difference between two scrapes around calls this test makes, so
the counts are exact: the interceptor counts a call before its answer leaves
the server, and nothing else calls these servers meanwhile.
"""

from __future__ import annotations

import math
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clients import RecommenderClient, TrainerClient
from movierec.v1 import recommender_pb2, recommender_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from tests.datagen import write_grouplens_files
from tests.servers import Scrape, free_port, start_recommender, start_trainer

RECOMMENDER = "movierec.v1.Recommender"
TRAINER = "movierec.v1.Trainer"
REQUEST_THREADS = 2  # the recommender's --threads: few, so a health watcher holding one would show


def _grpc(method: str, service: str = RECOMMENDER, grpc_type: str = "unary") -> dict:
    return {"grpc_service": service, "grpc_method": method, "grpc_type": grpc_type}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("metrics")
    data_root = write_grouplens_files(base / "data")
    model_root = base / "models"
    trainer_metrics, recommender_metrics = free_port(), free_port()
    trainer = start_trainer(model_root, base, "--data-root", str(data_root), "--metrics-port", str(trainer_metrics))
    recommender = start_recommender(model_root, base, "--metrics-port", str(recommender_metrics),
                                    "--threads", str(REQUEST_THREADS))
    try:
        before_training = Scrape(trainer_metrics)
        with TrainerClient(trainer.address, timeout=30) as tc:
            job = tc.wait_for_job(tc.train("two_tower", epochs=2, ratings_path="ratings.data",
                                           items_path="items.item", holdout_size=2, refit=False).id, timeout=300)
        assert job.state == "SUCCEEDED", job.error
        with RecommenderClient(recommender.address, timeout=10) as rc:
            rc.wait_until_serving(timeout=60)
        yield {"trainer": trainer, "recommender": recommender, "trainer_metrics": trainer_metrics,
               "recommender_metrics": recommender_metrics, "before_training": before_training, "job": job}
    finally:
        trainer.terminate()
        recommender.terminate()


def test_each_call_is_counted_once_under_the_code_its_caller_got(stack):
    port = stack["recommender_metrics"]
    ok, invalid, malformed = 7, 3, 2
    before = Scrape(port)
    with grpc.insecure_channel(stack["recommender"].address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        for user in range(1, ok + 1):
            stub.Recommend(recommender_pb2.RecommendRequest(user_id=str(user), k=5), timeout=10)
        for _ in range(invalid):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Recommend(recommender_pb2.RecommendRequest(user_id="1", k=0), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        raw = channel.unary_unary(f"/{RECOMMENDER}/Recommend")  # bytes in, bytes out
        for _ in range(malformed):
            with pytest.raises(grpc.RpcError) as refused:
                raw(b"\xff\xff\xff", timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as missing:
            stub.SimilarItems(recommender_pb2.SimilarItemsRequest(movie_id=999_999, k=5), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    after = Scrape(port)

    def rise(name, **labels):
        return after(name, **labels) - before(name, **labels)

    recommend = _grpc("Recommend")
    assert rise("grpc_server_handled_total", **recommend, grpc_code="OK") == ok
    assert rise("grpc_server_handled_total", **recommend, grpc_code="InvalidArgument") == invalid + malformed
    assert rise("grpc_server_handled_total", **recommend, grpc_code="Unknown") == 0
    assert rise("grpc_server_started_total", **recommend) == ok + invalid + malformed
    assert rise("grpc_server_handling_seconds_count", **recommend) == ok + invalid + malformed
    assert after("grpc_server_handling_seconds_bucket", **recommend, le="+Inf") == \
        after("grpc_server_handling_seconds_count", **recommend)
    assert rise("grpc_server_handling_seconds_sum", **recommend) > 0
    similar = _grpc("SimilarItems")
    assert rise("grpc_server_handled_total", **similar, grpc_code="NotFound") == 1
    assert rise("grpc_server_handled_total", **similar, grpc_code="OK") == 0


def test_a_misspelt_series_fails_instead_of_reading_zero(stack):
    """The ``== 0`` checks here read series no call has created yet; a typo in a name or a label must fail
    them rather than read 0 (``tests.servers.Scrape``)."""
    scrape = Scrape(stack["recommender_metrics"])
    recommend = _grpc("Recommend")
    with pytest.raises(AssertionError, match="is not exported"):
        scrape("grpc_server_handeld_total", **recommend, grpc_code="Unknown")
    with pytest.raises(AssertionError, match="has no label"):
        scrape("grpc_server_handled_total", **recommend, grpc_status="Unknown")
    with pytest.raises(AssertionError, match="no series"):
        scrape.require("grpc_server_handled_total", **recommend, grpc_code="Unknown")
    assert scrape("grpc_server_handled_total", **recommend, grpc_code="Unknown") == 0  # exported, never touched


def test_recommender_reports_the_served_version_its_load_and_sessions(stack):
    port = stack["recommender_metrics"]
    with RecommenderClient(stack["recommender"].address, timeout=10) as rc:
        served = rc.model_status().served_version
    before = Scrape(port)
    with grpc.insecure_channel(stack["recommender"].address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        for _ in range(3):
            stub.Recommend(recommender_pb2.RecommendRequest(user_id="5", k=5, recent_movie_ids=[1, 2, 3]), timeout=10)
        stub.Recommend(recommender_pb2.RecommendRequest(user_id="5", k=5), timeout=10)  # not a session
        excluding = recommender_pb2.Filter(exclude_movie_ids=[1])
        stub.Recommend(recommender_pb2.RecommendRequest(user_id="5", k=5, filter=excluding), timeout=10)
        stub.SimilarItems(recommender_pb2.SimilarItemsRequest(movie_id=1, k=5, filter=excluding), timeout=10)
        stub.SimilarItems(recommender_pb2.SimilarItemsRequest(movie_id=1, k=5), timeout=10)  # not filtered
    after = Scrape(port)

    assert served == 1
    assert after.require("movierec_model_version") == served
    # This recommender started before anything was published and has loaded exactly the one version.
    assert after("movierec_model_reloads_total", outcome="loaded") == 1
    assert after("movierec_model_reloads_total", outcome="rejected") == 0
    assert after("movierec_model_load_seconds_count") == 1
    assert after("movierec_model_load_seconds_sum") > 0
    assert after("movierec_session_requests_total") - before("movierec_session_requests_total") == 3
    for rpc, filtered in (("Recommend", 1), ("SimilarItems", 1), ("RecommendBatch", 0)):
        assert after("movierec_filtered_requests_total", rpc=rpc) - before(
            "movierec_filtered_requests_total", rpc=rpc) == filtered
    assert after("movierec_hidden_movies") == 0
    assert "movierec_jobs" not in after.names, "the recommender exports the trainer's metrics"
    assert "process_resident_memory_bytes" in after.names


def test_trainer_reports_the_job_through_its_states_and_its_training_progress(stack):
    before, job = stack["before_training"], stack["job"]
    after = Scrape(stack["trainer_metrics"])

    def rise(name, **labels):
        return after(name, **labels) - before(name, **labels)

    for state, count in (("QUEUED", 1), ("RUNNING", 1), ("SUCCEEDED", 1), ("FAILED", 0), ("CANCELLED", 0)):
        assert rise("movierec_jobs_total", state=state) == count, state
    assert after.require("movierec_jobs_queued") == 0
    assert job.progress.epoch == 2
    assert after("movierec_training_epoch") == job.progress.epoch
    assert math.isfinite(job.progress.loss) and job.progress.loss > 0
    assert after("movierec_training_loss") == pytest.approx(job.progress.loss, rel=1e-6)
    assert rise("grpc_server_handled_total", **_grpc("Train", TRAINER), grpc_code="OK") == 1
    assert "movierec_model_version" not in after.names, "the trainer exports the recommender's metrics"


def _wait_for_rise(port: int, before: Scrape, name: str, **labels) -> None:
    """The server learns of a cancel asynchronously: waits for the count, not for a fixed time."""
    deadline = time.monotonic() + 10
    while Scrape(port)(name, **labels) == before(name, **labels):
        assert time.monotonic() < deadline, f"{name} {labels} never rose"
        time.sleep(0.05)


def test_streams_are_counted_when_they_end(stack):
    """Server streams that finish, are refused before their first message, or are cancelled by their
    caller (a generator handler and grpc_health's callback one), and a bidirectional stream."""
    trainer_port, recommender_port = stack["trainer_metrics"], stack["recommender_metrics"]
    watch_job = _grpc("WatchJob", TRAINER, "server_stream")
    before = Scrape(trainer_port)
    with grpc.insecure_channel(stack["trainer"].address) as channel:
        stub = trainer_pb2_grpc.TrainerStub(channel)
        snapshots = list(stub.WatchJob(trainer_pb2.GetJobRequest(job_id=stack["job"].id), timeout=30))
        assert snapshots and snapshots[-1].state == trainer_pb2.TrainJob.State.Value("SUCCEEDED")
        with pytest.raises(grpc.RpcError) as missing:
            list(stub.WatchJob(trainer_pb2.GetJobRequest(job_id="job-nonexistent"), timeout=30))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    after = Scrape(trainer_port)
    assert after("grpc_server_handled_total", **watch_job, grpc_code="OK") - \
        before("grpc_server_handled_total", **watch_job, grpc_code="OK") == 1
    assert after("grpc_server_handled_total", **watch_job, grpc_code="NotFound") - \
        before("grpc_server_handled_total", **watch_job, grpc_code="NotFound") == 1
    assert after("grpc_server_started_total", **watch_job) - before("grpc_server_started_total", **watch_job) == 2

    health_watch = _grpc("Watch", "grpc.health.v1.Health", "server_stream")
    before = Scrape(recommender_port)
    with grpc.insecure_channel(stack["recommender"].address) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=RECOMMENDER),
                                                           timeout=30)
        assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
        assert Scrape(recommender_port)("grpc_server_started_total", **health_watch) - \
            before("grpc_server_started_total", **health_watch) == 1
        stream.cancel()
        _wait_for_rise(recommender_port, before, "grpc_server_handled_total", **health_watch, grpc_code="Canceled")

        reflection = _grpc("ServerReflectionInfo", "grpc.reflection.v1alpha.ServerReflection", "bidi_stream")
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        answers = list(stub.ServerReflectionInfo(iter([ask, ask]), timeout=30))
        assert len(answers) == 2
        # Not asserted: a bidi stream its caller cancels while the handler waits for its next request.
        # grpcio may hand that handler the end of its requests before the cancel shows on the context,
        # so the handler ends as if the caller had half-closed, and the call counts as OK (seen in CI).
    after = Scrape(recommender_port)
    assert after("grpc_server_handled_total", **reflection, grpc_code="OK") - \
        before("grpc_server_handled_total", **reflection, grpc_code="OK") == 1
    assert after("grpc_server_started_total", **reflection) - before("grpc_server_started_total", **reflection) == 1
    assert after("grpc_server_handled_total", **health_watch, grpc_code="Canceled") - \
        before("grpc_server_handled_total", **health_watch, grpc_code="Canceled") == 1


def test_health_watchers_do_not_hold_request_threads(stack):
    """Wrapping a handler must keep grpc_health's Watch non-blocking: otherwise every open watch
    (a balancer, a client waiting for SERVING) holds one of the --threads request threads."""
    with grpc.insecure_channel(stack["recommender"].address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest(service=RECOMMENDER), timeout=30)
                   for _ in range(REQUEST_THREADS * 2)]
        try:
            for watch in watches:
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            answer = recommender_pb2_grpc.RecommenderStub(channel).Recommend(
                recommender_pb2.RecommendRequest(user_id="1", k=3), timeout=5)
            assert len(answer.items) == 3
        finally:
            for watch in watches:
                watch.cancel()
