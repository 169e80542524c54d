"""The Python clients against a real, in-process gRPC server with scripted servicers.

Why not mock the stubs: what matters is the wire behaviour (request fields,
metadata, deadlines, gRPC's own retries, stream breaks), and only a real
server on a loopback port exercises it. The fakes (``fakes.py``, started by
the fixtures in ``conftest.py``) record every request and answer from small
fixed protos; a test changes one method's behaviour by installing a handler.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from clients import (
    BatchRecommendations,
    Cancelled,
    ConfigurationError,
    DeadlineExceeded,
    FailedPrecondition,
    Filter,
    HiddenMovies,
    InvalidArgument,
    Item,
    Job,
    ModelStatus,
    MovieRecError,
    NotFound,
    PermissionDenied,
    Recommendations,
    RecommenderClient,
    ResourceExhausted,
    SimilarItems,
    TrainerClient,
    Unauthenticated,
    Unavailable,
)
from movierec.v1 import recommender_pb2, recommender_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from tests.certs import self_signed
from tests.unit.fakes import (
    RECOMMENDER,
    T0,
    FakeRecommender,
    FakeTrainer,
    Replica,
    abort,
    fail_first,
    finished_job,
    make_job,
    rec_items,
)

pytestmark = pytest.mark.usefixtures("fresh")

# --------------------------------------------------------------------------- recommender: translation


def test_recommend_sends_the_request_and_returns_typed_items(rc, servers):
    recs = rc.recommend(42, k=2)

    (request,) = servers.recommender.requests("Recommend")
    assert request.user_id == "42" and request.k == 2
    assert not request.HasField("exclude_seen")  # server default applies
    assert recs == Recommendations(
        items=[Item(50, "Star Wars (1977)", 0.75, ("Action", "Sci-Fi"), 1977),
               Item(1346, "Misérables, Les (1995)", 0.5)],  # year 0 on the wire: None (unknown)
        model_version=7,
        cold_start=False,
    )
    assert [item.title for item in recs] == ["Star Wars (1977)", "Misérables, Les (1995)"]
    assert len(recs) == 2


def test_recommend_exclude_seen_is_sent_only_when_given(rc, servers):
    rc.recommend("1", exclude_seen=False)
    rc.recommend("1", exclude_seen=True)

    sent = servers.recommender.requests("Recommend")
    assert [r.HasField("exclude_seen") for r in sent] == [True, True]
    assert [r.exclude_seen for r in sent] == [False, True]
    assert sent[0].k == 10  # the default k


def test_recommend_reports_cold_start(rc, servers):
    servers.recommender.handlers["Recommend"] = lambda request, context: recommender_pb2.RecommendResponse(
        items=rec_items(1), model_version=3, cold_start=True
    )
    recs = rc.recommend("nobody")
    assert recs.cold_start is True and recs.model_version == 3


def test_recommend_with_recent_movies_sends_them_in_order_and_reports_unknown_ones(rc, servers):
    servers.recommender.handlers["Recommend"] = lambda request, context: recommender_pb2.RecommendResponse(
        items=rec_items(2), model_version=9, unknown_movie_ids=[99999]
    )
    recs = rc.recommend("nobody", k=2, recent=(m for m in [50, 99999, np.int64(181), 50]))

    (request,) = servers.recommender.requests("Recommend")
    assert list(request.recent_movie_ids) == [50, 99999, 181, 50]  # oldest first, as given
    assert recs.unknown_movie_ids == [99999] and recs.model_version == 9
    servers.recommender.handlers.clear()
    assert rc.recommend("nobody").unknown_movie_ids == []
    assert list(servers.recommender.requests("Recommend")[1].recent_movie_ids) == []


def test_recent_movies_must_be_integers(rc, servers):
    for bad in (["50"], [1.5], [True], [2**63]):
        with pytest.raises(ConfigurationError, match="invalid recommend request"):
            rc.recommend("1", recent=bad)
    assert servers.recommender.requests("Recommend") == []


def test_failed_precondition_is_its_own_exception(rc, servers):
    servers.recommender.handlers["Recommend"] = abort(
        grpc.StatusCode.FAILED_PRECONDITION, "model version 3 was published before sessions were supported"
    )
    with pytest.raises(FailedPrecondition, match="model version 3 was published before") as caught:
        rc.recommend("1", recent=[50])
    assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert len(servers.recommender.requests("Recommend")) == 1  # not retried


def test_recommend_batch(rc, servers):
    batch = rc.recommend_batch([1, "999999"], k=1, exclude_seen=False)

    (request,) = servers.recommender.requests("RecommendBatch")
    assert list(request.user_ids) == ["1", "999999"] and request.k == 1 and request.exclude_seen is False
    assert isinstance(batch, BatchRecommendations) and batch.model_version == 7
    assert [r.user_id for r in batch] == ["1", "999999"]
    assert batch.for_user("999999").cold_start is True
    assert batch.for_user(1).items == [Item(50, "Star Wars (1977)", 0.75, ("Action", "Sci-Fi"), 1977)]
    with pytest.raises(KeyError):
        batch.for_user("2")


def test_similar_items(rc, servers):
    similar = rc.similar_items(50, k=2)

    (request,) = servers.recommender.requests("SimilarItems")
    assert request.movie_id == 50 and request.k == 2
    assert similar == SimilarItems(
        movie=Item(50, "Star Wars (1977)", 1.0),
        items=[Item(1346, "Misérables, Les (1995)", 0.5),
               Item(181, "Return of the Jedi (1983)", 0.25, ("Action", "Romance"), 1983)],
        model_version=7,
    )


def test_model_status(rc):
    status = rc.model_status()

    assert isinstance(status, ModelStatus)
    assert status.served_version == 7 and status.serving
    assert status.pinned_version is None  # 0 on the wire = follow the newest
    assert status.loaded_at == T0 and status.loaded_at.tzinfo is not None
    assert (status.model_kind, status.model_root, status.num_users, status.num_items) == (
        "two_tower",
        "/models",
        943,
        1682,
    )
    assert [(v.version, v.state, v.reason, v.model_kind) for v in status.versions] == [
        (8, "REJECTED", "NaN scores", "bpr"),
        (7, "SERVING", "", "two_tower"),
    ]
    assert status.versions[1].metrics == {"recall_at_10": 0.125}
    assert status.metrics == {"recall_at_10": 0.125}


def test_model_status_hidden_movies(rc, servers):
    assert (rc.model_status().hidden_movies, rc.model_status().hidden_sequence) == (0, 0)
    servers.recommender.handlers["GetModelStatus"] = lambda r, c: recommender_pb2.ModelStatus(
        served_version=7, hidden_movies=3, hidden_sequence=9, hidden_problem="cannot read the rules")
    status = rc.model_status()
    assert (status.hidden_movies, status.hidden_sequence, status.hidden_problem) == (3, 9, "cannot read the rules")


def test_model_status_before_any_model(rc, servers):
    servers.recommender.handlers["GetModelStatus"] = lambda r, c: recommender_pb2.ModelStatus(model_root="/m")
    status = rc.model_status()
    assert status.served_version is None and not status.serving
    assert status.loaded_at is None and status.versions == []


# --------------------------------------------------------------------------- recommender: filters


def test_a_filter_is_sent_as_the_proto_filter(rc, servers):
    rc.recommend("42", k=3, filter=Filter(
        exclude_movie_ids=[50, np.int64(181)], only_movie_ids=np.arange(1, 4), genres_any=["Comedy", "Romance"],
        genres_all={"Drama"}, exclude_genres="Horror", min_year=1990, max_year=np.int32(1999)))

    (request,) = servers.recommender.requests("Recommend")
    assert request.HasField("filter")
    assert request.filter == recommender_pb2.Filter(
        exclude_movie_ids=[50, 181], only_movie_ids=[1, 2, 3], genres_any=["Comedy", "Romance"],
        genres_all=["Drama"], exclude_genres=["Horror"], min_year=1990, max_year=1999)


def test_no_filter_or_an_empty_one_sends_none(rc, servers):
    rc.recommend("1")
    rc.recommend("1", filter=Filter())
    rc.recommend("1", filter=Filter(min_year=0, exclude_movie_ids=[]))  # 0 is "no bound", as on the wire
    assert [r.HasField("filter") for r in servers.recommender.requests("Recommend")] == [False, False, False]


def test_batch_and_similar_send_the_filter_too(rc, servers):
    only_year = Filter(min_year=1995)
    rc.recommend_batch(["1", "2"], k=2, filter=Filter(genres_any="Sci-Fi", exclude_movie_ids=[50]))
    rc.similar_items(50, k=2, filter=only_year)

    (batch,) = servers.recommender.requests("RecommendBatch")
    assert list(batch.filter.genres_any) == ["Sci-Fi"] and list(batch.filter.exclude_movie_ids) == [50]
    assert list(batch.user_ids) == ["1", "2"] and not batch.HasField("exclude_seen")
    (similar,) = servers.recommender.requests("SimilarItems")
    assert similar.filter == recommender_pb2.Filter(min_year=1995) and similar.movie_id == 50


@pytest.mark.parametrize(("fields", "message"), [
    (dict(exclude_movie_ids=["50"]), "filter.exclude_movie_ids must be integer movie ids, got '50'"),
    (dict(only_movie_ids=[1, True]), "filter.only_movie_ids must be integer movie ids, got True"),
    (dict(only_movie_ids=7), "filter.only_movie_ids must be a collection of integer movie ids, got 7"),
    (dict(exclude_movie_ids="50,181"), "must be a collection of integer movie ids"),
    (dict(genres_any=["Comedy", 3]), "filter.genres_any must be genre names .strings., got 3"),
    (dict(genres_all=None), "filter.genres_all must be genre names, got None"),
    (dict(min_year="1990"), "filter.min_year must be a year .an integer. or None, got '1990'"),
    (dict(max_year=1999.5), "filter.max_year must be a year"),
])
def test_a_filter_of_the_wrong_types_is_refused_when_made(fields, message):
    with pytest.raises(ConfigurationError, match=message):
        Filter(**fields)


def test_what_does_not_fit_the_wire_is_refused_before_sending(rc, servers):
    with pytest.raises(ConfigurationError, match="invalid filter"):
        rc.recommend("1", filter=Filter(exclude_movie_ids=[2**63]))
    with pytest.raises(ConfigurationError, match="invalid filter"):
        rc.similar_items(50, filter=Filter(max_year=2**31))
    with pytest.raises(ConfigurationError, match="filter must be a clients.Filter, got dict"):
        rc.recommend_batch(["1"], filter={"genres_any": ["Comedy"]})  # type: ignore[arg-type]
    assert servers.recommender.calls == []


def test_the_server_judges_limits_names_and_ranges(rc, servers):
    """Only types are checked client-side: an inverted range or a list over its limit reaches the server,
    whose InvalidArgument carries the numbers (and the known genres)."""
    servers.recommender.handlers["Recommend"] = abort(
        grpc.StatusCode.INVALID_ARGUMENT, "filter.min_year 1999 is after filter.max_year 1990")
    with pytest.raises(InvalidArgument, match="1999 is after filter.max_year 1990"):
        rc.recommend("1", filter=Filter(min_year=1999, max_year=1990, only_movie_ids=range(100_001)))
    (request,) = servers.recommender.requests("Recommend")
    assert len(request.filter.only_movie_ids) == 100_001


def test_a_filter_is_a_hashable_value():
    comedy = Filter(genres_any=["Comedy"], exclude_movie_ids=np.array([5, 6]))
    assert comedy == Filter(genres_any=("Comedy",), exclude_movie_ids=[5, 6]) and len({comedy, comedy}) == 1
    assert comedy.exclude_movie_ids == (5, 6) and type(comedy.exclude_movie_ids[0]) is int
    assert Filter().is_empty and Filter(min_year=0).min_year is None and not comedy.is_empty
    with pytest.raises(AttributeError):
        comedy.min_year = 1990  # type: ignore[misc]


def test_eligible_movies_and_unknown_ids_come_back(rc, servers):
    items = rec_items(2)
    servers.recommender.handlers["Recommend"] = lambda r, c: recommender_pb2.RecommendResponse(
        items=items, model_version=7, eligible_movies=2, unknown_movie_ids=[99999])
    servers.recommender.handlers["RecommendBatch"] = lambda r, c: recommender_pb2.RecommendBatchResponse(
        results=[recommender_pb2.UserRecommendations(user_id="1", items=items, eligible_movies=2),
                 recommender_pb2.UserRecommendations(user_id="2", eligible_movies=0)],
        model_version=7, unknown_movie_ids=[99999, 88888])
    servers.recommender.handlers["SimilarItems"] = lambda r, c: recommender_pb2.SimilarItemsResponse(
        movie=items[0], items=items[1:], model_version=7, eligible_movies=1, unknown_movie_ids=[5])
    only = Filter(only_movie_ids=[50, 1346, 99999])

    recs = rc.recommend("1", filter=only)
    assert (recs.eligible_movies, recs.unknown_movie_ids, len(recs)) == (2, [99999], 2)
    batch = rc.recommend_batch(["1", "2"], filter=only)
    assert [(r.user_id, r.eligible_movies, len(r)) for r in batch] == [("1", 2, 2), ("2", 0, 0)]
    assert batch.unknown_movie_ids == [99999, 88888]
    similar = rc.similar_items(50, filter=only)
    assert (similar.eligible_movies, similar.unknown_movie_ids, len(similar)) == (1, [5], 1)


def test_an_older_server_leaves_eligible_unsaid(rc):
    """A server older than filters answers movies with eligible_movies 0: None, not "nothing passed"."""
    assert rc.recommend("1").eligible_movies is None
    assert [r.eligible_movies for r in rc.recommend_batch(["1"])] == [None]
    similar = rc.similar_items(50)
    assert similar.eligible_movies is None and similar.unknown_movie_ids == []


# --------------------------------------------------------------------------- errors, deadlines, retries


def test_invalid_argument_carries_details_and_target(rc, servers):
    servers.recommender.handlers["Recommend"] = abort(grpc.StatusCode.INVALID_ARGUMENT, "k must be in 1..500")

    with pytest.raises(InvalidArgument) as caught:
        rc.recommend("1", k=100000)

    error = caught.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details == "k must be in 1..500"
    assert error.target == servers.address and error.method == "Recommend"
    assert "k must be in 1..500" in str(error) and servers.address in str(error)
    assert not isinstance(error, grpc.RpcError)
    assert len(servers.recommender.requests("Recommend")) == 1  # not retried


def test_not_found_for_an_unknown_movie(rc, servers):
    servers.recommender.handlers["SimilarItems"] = abort(grpc.StatusCode.NOT_FOUND, "movie 99999 not in the model")
    with pytest.raises(NotFound, match="movie 99999 not in the model"):
        rc.similar_items(99999)


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.CANCELLED, Cancelled),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
        (grpc.StatusCode.INTERNAL, MovieRecError),
    ],
)
def test_status_codes_map_to_exceptions(tc, servers, code, error_type):
    servers.trainer.handlers["Train"] = abort(code, "nope")
    with pytest.raises(error_type) as caught:
        tc.train("two_tower")
    assert caught.value.code is code and caught.value.details == "nope"


def test_unavailable_reads_are_retried_by_grpc(rc, servers):
    servers.recommender.handlers["Recommend"] = fail_first(2, grpc.StatusCode.UNAVAILABLE, FakeRecommender._recommend)

    recs = rc.recommend("1")

    assert recs.model_version == 7
    assert len(servers.recommender.requests("Recommend")) == 3


def test_unavailable_after_the_retries_run_out(rc, servers):
    servers.recommender.handlers["GetModelStatus"] = abort(grpc.StatusCode.UNAVAILABLE, "no model loaded yet")

    with pytest.raises(Unavailable, match="no model loaded yet"):
        rc.model_status()
    assert len(servers.recommender.requests("GetModelStatus")) == 4  # maxAttempts


def test_unreachable_server_is_unavailable():
    with RecommenderClient("127.0.0.1:1", timeout=5) as client:
        with pytest.raises(Unavailable) as caught:
            client.recommend("1")
    assert "127.0.0.1:1" in str(caught.value)


def _held_until(release: threading.Event, answered: list):
    """A Recommend handler that answers only once ``release`` is set (10 s at most)."""

    def handler(request, context):
        release.wait(10)
        answered.append(True)
        return recommender_pb2.RecommendResponse(items=rec_items(1), model_version=7)

    return handler


def test_every_call_has_a_deadline(servers):
    """The client gives up at its deadline while the server is still working on the call."""
    release, answered = threading.Event(), []
    servers.recommender.handlers["Recommend"] = _held_until(release, answered)
    try:
        with RecommenderClient(servers.address, timeout=0.2) as client:
            with pytest.raises(DeadlineExceeded) as caught:
                client.recommend("1")
        assert answered == [], "the client waited for the server's answer"
    finally:
        release.set()
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert isinstance(caught.value, TimeoutError)


def test_per_call_timeout_overrides_the_default(rc, servers):
    release, answered = threading.Event(), []
    servers.recommender.handlers["Recommend"] = _held_until(release, answered)
    try:
        with pytest.raises(DeadlineExceeded):
            rc.recommend("1", timeout=0.1)  # the client's default is 5 s
        assert answered == []
    finally:
        release.set()


# --------------------------------------------------------------------------- credentials


def test_token_argument_is_sent_as_bearer_metadata(servers):
    with RecommenderClient(servers.address, token="s3cret") as client:
        client.recommend("1")
    (metadata,) = servers.recommender.metadata("Recommend")
    assert metadata["authorization"] == "Bearer s3cret"


def test_no_token_no_authorization_header(rc, servers):
    rc.recommend("1")
    (metadata,) = servers.recommender.metadata("Recommend")
    assert "authorization" not in metadata


def test_token_from_environment(servers, monkeypatch):
    monkeypatch.setenv("MOVIEREC_TOKEN", "from-env")
    with TrainerClient(servers.address) as client:
        client.list_jobs()
    assert servers.trainer.metadata("ListJobs")[0]["authorization"] == "Bearer from-env"


def test_token_file_from_argument_and_environment(servers, monkeypatch, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    with TrainerClient(servers.address, token_file=token_file) as client:
        client.list_jobs()
    monkeypatch.setenv("MOVIEREC_TOKEN_FILE", str(token_file))
    with TrainerClient(servers.address) as client:
        client.list_jobs()
    assert [md["authorization"] for md in servers.trainer.metadata("ListJobs")] == ["Bearer from-file"] * 2


def test_explicit_token_beats_the_environment(servers, monkeypatch):
    monkeypatch.setenv("MOVIEREC_TOKEN", "from-env")
    with RecommenderClient(servers.address, token="explicit") as client:
        client.recommend("1")
    assert servers.recommender.metadata("Recommend")[0]["authorization"] == "Bearer explicit"


def test_unreadable_or_empty_token_file_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="cannot read token file"):
        RecommenderClient("127.0.0.1:1", token_file=tmp_path / "missing")
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(ConfigurationError, match="is empty"):
        RecommenderClient("127.0.0.1:1", token_file=tmp_path / "empty")


def test_client_certificate_needs_its_key(tmp_path):
    with pytest.raises(ConfigurationError, match="both a client certificate and its key"):
        RecommenderClient("127.0.0.1:1", client_cert=tmp_path / "cert.pem")


def test_existing_channel_is_used_and_left_open(servers):
    channel = grpc.insecure_channel(servers.address)
    with RecommenderClient(channel=channel) as client:
        assert client.recommend("1").model_version == 7
    # still usable after the client closed
    assert recommender_pb2_grpc.RecommenderStub(channel).Recommend(
        recommender_pb2.RecommendRequest(user_id="1", k=1), timeout=5
    ).model_version == 7
    channel.close()


def test_mutual_tls_with_token(tmp_path):
    server_key, server_cert = (path.read_bytes() for path in self_signed(tmp_path, "localhost"))
    client_cert = self_signed(tmp_path, "client")[1].read_bytes()
    fake = FakeRecommender()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    recommender_pb2_grpc.add_RecommenderServicer_to_server(fake, server)
    credentials = grpc.ssl_server_credentials(
        [(server_key, server_cert)], root_certificates=client_cert, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        with RecommenderClient(
            f"localhost:{port}",
            root_certificates=tmp_path / "localhost.pem",
            client_cert=tmp_path / "client.pem",
            client_key=tmp_path / "client.key",
            token="tls-token",
        ) as client:
            assert client.recommend("1").model_version == 7
        assert fake.metadata("Recommend")[0]["authorization"] == "Bearer tls-token"
        # Without the client certificate the server refuses the handshake.
        with RecommenderClient(f"localhost:{port}", root_certificates=tmp_path / "localhost.pem", timeout=2) as client:
            with pytest.raises(Unavailable):
                client.recommend("1")
    finally:
        server.stop(0)


# --------------------------------------------------------------------------- health


def test_wait_until_serving_polls_the_health_service(rc, servers):
    servers.health.set(RECOMMENDER, health_pb2.HealthCheckResponse.NOT_SERVING)
    timer = threading.Timer(0.3, servers.health.set, (RECOMMENDER, health_pb2.HealthCheckResponse.SERVING))
    timer.start()
    started = time.monotonic()
    rc.wait_until_serving(timeout=5, poll_interval=0.05)
    assert 0.25 < time.monotonic() - started < 3
    timer.join()


def test_wait_until_serving_times_out(rc, servers):
    servers.health.set(RECOMMENDER, health_pb2.HealthCheckResponse.NOT_SERVING)
    with pytest.raises(DeadlineExceeded, match="NOT_SERVING"):
        rc.wait_until_serving(timeout=0.3, poll_interval=0.05)


def test_wait_until_serving_tolerates_an_unreachable_server():
    with TrainerClient("127.0.0.1:1", timeout=1) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="movierec.v1.Trainer not serving"):
            client.wait_until_serving(timeout=0.5, poll_interval=0.05)
    assert time.monotonic() - started < 2


def test_trainer_health(tc):
    tc.wait_until_serving(timeout=2)


# --------------------------------------------------------------------------- trainer


def test_train_translates_every_field(tc, servers):
    job = tc.train(
        "two_tower",
        epochs=5,
        ratings_path="ml/u.data",
        items_path="ml/u.item",
        hyperparameters={"embedding_dim": 64, "learning_rate": 0.05, "batch_size": None},
        holdout="ua",
        holdout_size=10,
        seed=1,
        idempotency_key="key-1",
        min_validation_recall_at_10=0.05,
        require_no_regression=True,
        require_beating_baseline=True,
    )

    (request,) = servers.trainer.requests("Train")
    assert request.model == "two_tower" and request.epochs == 5 and request.seed == 1
    assert (request.dataset.ratings_path, request.dataset.items_path) == ("ml/u.data", "ml/u.item")
    assert request.hyperparameters.embedding_dim == 64
    assert request.hyperparameters.learning_rate == pytest.approx(0.05)
    assert request.hyperparameters.batch_size == 0
    assert (request.evaluation.holdout, request.evaluation.holdout_size) == ("ua", 10)
    assert request.idempotency_key == "key-1"
    assert request.quality_gate.min_validation_recall_at_10 == pytest.approx(0.05)
    assert request.quality_gate.require_no_regression and not request.quality_gate.disabled
    assert request.quality_gate.require_beating_baseline
    assert isinstance(job, Job)
    assert (job.id, job.state, job.model, job.done) == ("job-1", "QUEUED", "two_tower", False)
    assert job.progress.total_epochs == 5 and job.model_version is None


def test_train_defaults_are_proto_zeros_with_a_random_idempotency_key(tc, servers):
    tc.train("bpr")
    tc.train("bpr", quality_gate_disabled=True)

    first, second = servers.trainer.requests("Train")
    assert first.epochs == 0 and first.seed == 0 and first.evaluation.holdout == ""
    assert first.hyperparameters == trainer_pb2.Hyperparameters()
    assert len(first.idempotency_key) == 32 and first.idempotency_key != second.idempotency_key
    assert second.quality_gate.disabled


def test_train_refit_is_sent_only_when_given(tc, servers):
    tc.train("ease")
    tc.train("ease", refit=False)
    tc.train("ease", refit=True)

    sent = servers.trainer.requests("Train")
    assert [r.evaluation.HasField("refit") for r in sent] == [False, True, True]
    assert [r.evaluation.refit for r in sent[1:]] == [False, True]


def test_train_rejects_unknown_hyperparameters_before_sending(tc, servers):
    with pytest.raises(ConfigurationError, match="unknown hyperparameter.*embeding_dim"):
        tc.train("two_tower", hyperparameters={"embeding_dim": 64})
    assert servers.trainer.requests("Train") == []


def test_train_refuses_an_option_it_does_not_know_before_sending(tc, servers):
    with pytest.raises(TypeError, match="'epoch'.*known: dataset, epochs"):
        tc.train("two_tower", epoch=5)
    assert servers.trainer.requests("Train") == []


def test_train_retry_keeps_the_idempotency_key(tc, servers):
    servers.trainer.handlers["Train"] = fail_first(1, grpc.StatusCode.UNAVAILABLE, FakeTrainer._train)
    tc.train("two_tower")
    first, second = servers.trainer.requests("Train")
    assert first.idempotency_key == second.idempotency_key


def test_get_job_translates_a_finished_job(tc, servers):
    job = tc.get_job("job-1")

    assert servers.trainer.requests("GetJob")[0].job_id == "job-1"
    assert (job.state, job.done, job.succeeded) == ("SUCCEEDED", True, True)
    assert job.model_version == 7 and job.published and job.evaluation_split == "ua"
    assert job.metrics == {"ndcg_at_10": 0.0625, "recall_at_10": 0.125}
    assert job.baseline_metrics["recall_at_10"] == 0.0625
    assert job.loss_history == pytest.approx([1 / 2, 1 / 3, 1 / 4])
    assert job.progress.epoch == 3 and job.progress.phase == "done"
    assert job.created_at == T0
    assert job.started_at == T0 + dt.timedelta(seconds=5)
    assert job.finished_at == T0 + dt.timedelta(minutes=2)


def test_get_job_unknown_id(tc):
    with pytest.raises(NotFound, match="no job 'nope'"):
        tc.get_job("nope")


def test_list_jobs_and_cancel(tc, servers):
    jobs = tc.list_jobs(limit=5)
    cancelled = tc.cancel_job("job-3")

    assert servers.trainer.requests("ListJobs")[0].limit == 5
    assert [(j.id, j.state) for j in jobs] == [("job-2", "SUCCEEDED"), ("job-1", "FAILED")]
    assert jobs[1].error == "boom" and jobs[1].model_version is None
    assert servers.trainer.requests("CancelJob")[0].job_id == "job-3"
    assert (cancelled.id, cancelled.state, cancelled.done) == ("job-3", "CANCELLED", True)


def test_watch_job_yields_every_update_until_the_end(tc):
    updates = list(tc.watch_job("job-1"))

    assert [u.state for u in updates] == ["QUEUED", "RUNNING", "RUNNING", "RUNNING", "SUCCEEDED"]
    assert [u.progress.epoch for u in updates[1:4]] == [0, 1, 2]
    assert updates[-1].done and not any(u.done for u in updates[:-1])


def test_watch_job_unknown_id_is_not_retried(tc, servers):
    with pytest.raises(NotFound):
        list(tc.watch_job("nope"))
    assert len(servers.trainer.requests("WatchJob")) == 1


def test_stopping_a_watch_early_cancels_the_stream(tc, servers):
    stream_cancelled = threading.Event()

    def endless(request, context):
        context.add_callback(stream_cancelled.set)
        while context.is_active():
            yield make_job(state="RUNNING")
            time.sleep(0.02)

    servers.trainer.handlers["WatchJob"] = endless
    updates = tc.watch_job("job-1")
    assert next(updates).state == "RUNNING"
    updates.close()
    assert stream_cancelled.wait(2)


def test_wait_for_job_reconnects_after_the_stream_breaks(tc, servers):
    watches = {"n": 0}

    def flaky_watch(request, context):
        watches["n"] += 1
        if watches["n"] == 1:
            yield make_job(state="QUEUED")
            yield make_job(state="RUNNING", epoch=1)
            context.abort(grpc.StatusCode.UNAVAILABLE, "server going away")
        yield make_job(state="RUNNING", epoch=2)
        yield finished_job()

    servers.trainer.handlers["WatchJob"] = flaky_watch
    servers.trainer.handlers["GetJob"] = lambda request, context: make_job(state="RUNNING", epoch=1)

    final = tc.wait_for_job("job-1", timeout=10)

    assert final.state == "SUCCEEDED" and final.model_version == 7
    assert watches["n"] == 2
    assert len(servers.trainer.requests("GetJob")) == 1  # checked once in between


def test_wait_for_job_returns_when_the_job_ended_while_disconnected(tc, servers):
    def broken_watch(request, context):
        yield make_job(state="RUNNING", epoch=1)
        context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")

    servers.trainer.handlers["WatchJob"] = broken_watch

    final = tc.wait_for_job("job-1", timeout=10)

    assert final.state == "SUCCEEDED"
    assert len(servers.trainer.requests("WatchJob")) == 1


def test_wait_for_job_polls_when_the_server_cannot_stream(tc, servers):
    servers.trainer.handlers["WatchJob"] = abort(grpc.StatusCode.UNIMPLEMENTED, "no streaming here")

    def eventually_done(request, context):  # the third poll sees the end
        return finished_job() if len(servers.trainer.requests("GetJob")) >= 3 else make_job(state="RUNNING")

    servers.trainer.handlers["GetJob"] = eventually_done

    final = tc.wait_for_job("job-1", timeout=10)

    assert final.state == "SUCCEEDED"
    assert len(servers.trainer.requests("GetJob")) == 3


def test_wait_for_job_times_out(tc, servers):
    def stuck(request, context):
        yield make_job(state="RUNNING", epoch=1)
        while context.is_active():
            time.sleep(0.01)

    servers.trainer.handlers["WatchJob"] = stuck
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="job job-1 did not finish within 0.3s .last state RUNNING"):
        tc.wait_for_job("job-1", timeout=0.3)
    assert time.monotonic() - started < 2


def test_wait_for_job_gives_up_when_the_server_stays_down(tc, servers):
    tc.max_reconnects = 1
    servers.trainer.handlers["WatchJob"] = abort(grpc.StatusCode.UNAVAILABLE, "down")
    servers.trainer.handlers["GetJob"] = abort(grpc.StatusCode.UNAVAILABLE, "down")
    with pytest.raises(Unavailable, match="down"):
        tc.wait_for_job("job-1", timeout=30)


def test_errors_survive_pickling():
    import pickle

    error = NotFound("no job", target="t:1", method="GetJob")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is NotFound and str(copy) == str(error) and copy.code is grpc.StatusCode.NOT_FOUND


# --------------------------------------------------------------------------- replicas: target and service config


def _config(plan) -> dict:
    import json

    return json.loads(plan.service_config)


def test_one_address_keeps_the_plain_channel():
    from clients.targets import channel_target

    plan = channel_target("localhost:50052", service=RECOMMENDER, retried=("Recommend",))
    assert (plan.target, plan.balanced, plan.authority) == ("localhost:50052", False, None)
    config = _config(plan)
    assert "loadBalancingConfig" not in config and "healthCheckConfig" not in config
    assert config["methodConfig"][0]["name"] == [{"service": RECOMMENDER, "method": "Recommend"}]
    assert config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


@pytest.mark.parametrize(
    "given, target",
    [
        ("127.0.0.1:1,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
        (" 127.0.0.1:1 , 127.0.0.2:2, ", "ipv4:127.0.0.1:1,127.0.0.2:2"),
        (["127.0.0.1:1", "127.0.0.1:2"], "ipv4:127.0.0.1:1,127.0.0.1:2"),
        ("[::1]:1,[::1]:2", "ipv6:[::1]:1,[::1]:2"),
        ("127.0.0.1:1,127.0.0.1:1,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),  # no backend twice
        ("localhost:1,localhost:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),  # names resolved, IPv4 preferred
    ],
)
def test_several_addresses_become_one_balanced_target(given, target):
    from clients.targets import channel_target

    plan = channel_target(given, service=RECOMMENDER, retried=("Recommend", "GetModelStatus"))
    assert plan.target == target and plan.balanced
    config = _config(plan)
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": RECOMMENDER}
    assert [n["method"] for n in config["methodConfig"][0]["name"]] == ["Recommend", "GetModelStatus"]
    first = given[0] if isinstance(given, list) else given.split(",")[0].strip()
    assert plan.authority == first  # TLS checks every replica against the first address's name


@pytest.mark.parametrize(
    "given, balanced",
    [
        ("dns:///recommenders.internal:50052", True),
        ("ipv4:10.0.0.1:1,10.0.0.2:1", True),
        ("ipv4:10.0.0.1:1", False),
        ("unix:/run/movierec.sock", False),
    ],
)
def test_target_uris_pass_through(given, balanced):
    from clients.targets import channel_target

    plan = channel_target(given, service=RECOMMENDER, retried=())
    assert plan.target == given and plan.balanced is balanced and plan.authority is None
    assert ("loadBalancingConfig" in _config(plan)) is balanced


def test_a_host_name_contributes_every_address_it_resolves_to(monkeypatch):
    import socket

    from clients import targets

    records = {
        "replicas": ["10.0.0.1", "10.0.0.2", "fd00::1"],
        "one": ["10.0.0.3"],
    }

    def getaddrinfo(host, port, *args, **kwargs):
        return [
            (socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
            for ip in records[host]
        ]

    monkeypatch.setattr(targets.socket, "getaddrinfo", getaddrinfo)
    plan = targets.channel_target("replicas:7,one:8", service=RECOMMENDER, retried=())
    assert plan.target == "ipv4:10.0.0.1:7,10.0.0.2:7,10.0.0.3:8" and plan.authority == "replicas:7"


@pytest.mark.parametrize(
    "given, message",
    [
        ("127.0.0.1:1,localhost", "not HOST:PORT"),
        ("127.0.0.1:1,::1:2", "not HOST:PORT"),
        ("127.0.0.1:1,127.0.0.1:99999", "not HOST:PORT"),
        ("127.0.0.1:2,dns:///a:1", "give it alone"),
        (["127.0.0.1:2", "ipv4:127.0.0.1:3"], "give it alone"),
        ("127.0.0.1:1,[::1]:2", "dns:///NAME:PORT"),
        (" , ", "no address"),
    ],
)
def test_bad_address_lists_are_configuration_errors(given, message):
    with pytest.raises(ConfigurationError, match=message):
        RecommenderClient(given)


def test_an_unresolvable_name_in_a_list_is_a_configuration_error(monkeypatch):
    import socket

    from clients import targets

    def getaddrinfo(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(targets.socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(ConfigurationError, match="cannot resolve 'replica-2'"):
        RecommenderClient("127.0.0.1:1,replica-2:2")


def test_the_trainer_takes_one_address():
    with pytest.raises(ConfigurationError, match="takes one address"):
        TrainerClient("127.0.0.1:1,127.0.0.1:2")


def test_a_token_to_loopback_replicas_is_no_plaintext_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RecommenderClient("127.0.0.1:1,localhost:2", token="t" * 16).close()
    with pytest.warns(UserWarning, match="plaintext"):
        RecommenderClient("127.0.0.1:1,10.1.2.3:2", token="t" * 16).close()


# --------------------------------------------------------------------------- replicas: real servers


def _wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _all_connected(client, replicas) -> None:
    """Calls until every replica has answered one (round robin only counts READY backends), then forgets them."""
    client.wait_until_serving(timeout=5)
    _wait_for(lambda: (client.recommend("1"), min(r.calls() for r in replicas))[1] > 0)
    for replica in replicas:
        replica.recommender.reset()


def test_calls_go_round_robin_over_the_replicas(replicas):
    with RecommenderClient(",".join(r.address for r in replicas), timeout=5, token="replica-token") as client:
        assert client.balanced
        _all_connected(client, replicas)
        versions = {client.recommend("1").model_version for _ in range(30)}
    assert versions == {7}
    assert [r.calls() for r in replicas] == [10, 10, 10]
    for replica in replicas:  # the same credentials for every backend
        assert {md["authorization"] for md in replica.recommender.metadata("Recommend")} == {"Bearer replica-token"}


def test_a_not_serving_replica_leaves_the_rotation_until_it_serves_again(replicas):
    """Client-side health checking: gRPC watches grpc.health.v1 on every backend."""
    with RecommenderClient([r.address for r in replicas], timeout=5) as client:
        _all_connected(client, replicas)
        replicas[1].set_serving(False)
        time.sleep(0.3)  # the health watch stream delivers the change
        for _ in range(20):
            client.recommend("1")
        assert replicas[1].calls() == 0
        assert replicas[0].calls() == replicas[2].calls() == 10

        replicas[1].set_serving(True)
        _wait_for(lambda: (client.recommend("1"), replicas[1].calls())[1] > 0)

        for replica in replicas:
            replica.set_serving(False)
        time.sleep(0.3)
        before = [r.calls() for r in replicas]
        with pytest.raises(Unavailable):
            client.recommend("1", timeout=2)
        assert [r.calls() for r in replicas] == before  # no call reached a replica that is not serving


def test_a_stopped_replica_costs_no_call(replicas):
    with RecommenderClient([r.address for r in replicas], timeout=5) as client:
        _all_connected(client, replicas)
        replicas[0].stop()
        results = [client.recommend("1").model_version for _ in range(30)]
    assert results == [7] * 30
    assert replicas[1].calls() + replicas[2].calls() == 30


def test_unavailable_is_retried_on_another_replica(replicas):
    replicas[0].recommender.handlers["Recommend"] = abort(grpc.StatusCode.UNAVAILABLE, "no model is loaded yet")
    with RecommenderClient([r.address for r in replicas], timeout=5) as client:
        client.wait_until_serving(timeout=5)
        assert [client.recommend("1").model_version for _ in range(12)] == [7] * 12
    assert replicas[0].calls() > 0  # it was asked, failed, and the retry went elsewhere
    assert replicas[1].calls() + replicas[2].calls() == 12


def test_tls_replicas_share_the_credentials_and_the_first_name(tmp_path):
    """Every replica is verified against the first address's host name ("localhost")."""
    server_key, server_cert = (path.read_bytes() for path in self_signed(tmp_path, "localhost"))
    client_cert = self_signed(tmp_path, "client")[1].read_bytes()
    credentials = grpc.ssl_server_credentials(
        [(server_key, server_cert)], root_certificates=client_cert, require_client_auth=True
    )
    started = [Replica(credentials) for _ in range(2)]
    addresses = ",".join(f"localhost:{r.port}" for r in started)
    try:
        with RecommenderClient(
            addresses,
            root_certificates=tmp_path / "localhost.pem",
            client_cert=tmp_path / "client.pem",
            client_key=tmp_path / "client.key",
            token="tls-token",
        ) as client:
            _all_connected(client, started)
            assert [client.recommend("1").model_version for _ in range(4)] == [7] * 4
        assert [r.calls() for r in started] == [2, 2]
        # The certificate names "localhost", not "127.0.0.1": checked against that name, it fails.
        ip_addresses = ",".join(f"127.0.0.1:{r.port}" for r in started)
        with RecommenderClient(ip_addresses, root_certificates=tmp_path / "localhost.pem",
                               client_cert=tmp_path / "client.pem", client_key=tmp_path / "client.key",
                               timeout=2) as client:
            with pytest.raises(Unavailable):
                client.recommend("1")
    finally:
        for replica in started:
            replica.stop()


# --------------------------------------------------------------------------- trainer: hidden movies


class HidingTrainer(trainer_pb2_grpc.TrainerServicer):
    """The hidden list as the trainer keeps it (a set and a sequence), recording what each call sent;
    its first ``unavailable`` HideMovies calls fail UNAVAILABLE."""

    def __init__(self):
        self.calls: list[tuple[str, list[int], dict[str, str]]] = []
        self.hidden: set[int] = set()
        self.sequence = 0
        self.unavailable = 0

    def HideMovies(self, request, context):
        self._record("HideMovies", request, context)
        if self.unavailable:
            self.unavailable -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "root briefly unreachable")
        return self._change(self.hidden.union(request.movie_ids))

    def UnhideMovies(self, request, context):
        self._record("UnhideMovies", request, context)
        return self._change(self.hidden.difference(request.movie_ids))

    def ListHiddenMovies(self, request, context):
        self._record("ListHiddenMovies", request, context)
        return trainer_pb2.HiddenMovies(movie_ids=sorted(self.hidden), sequence=self.sequence)

    def _record(self, method, request, context):
        self.calls.append((method, list(getattr(request, "movie_ids", [])), dict(context.invocation_metadata())))

    def _change(self, hidden):
        self.hidden, self.sequence = hidden, self.sequence + 1
        return trainer_pb2.HiddenMovies(movie_ids=sorted(self.hidden), sequence=self.sequence)


@pytest.fixture
def hiding():
    """A trainer keeping a hidden list, and a client of it holding a token."""
    servicer = HidingTrainer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trainer_pb2_grpc.add_TrainerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with TrainerClient(f"127.0.0.1:{port}", timeout=5, token="operator") as client:
            yield client, servicer
    finally:
        server.stop(0)


def test_hide_unhide_and_list(hiding):
    tc, trainer = hiding
    assert tc.hide_movies([123, np.int64(456), 123]) == HiddenMovies(movie_ids=[123, 456], sequence=1)
    after = tc.unhide_movies(iter([123, 9]))
    assert after == HiddenMovies([456], 2) and 456 in after and 123 not in after and list(after) == [456]
    assert tc.hidden_movies() == HiddenMovies([456], 2) and len(tc.hidden_movies()) == 1
    assert [(method, ids) for method, ids, _ in trainer.calls] == [
        ("HideMovies", [123, 456, 123]), ("UnhideMovies", [123, 9]), ("ListHiddenMovies", []),
        ("ListHiddenMovies", [])]
    assert {md["authorization"] for _, _, md in trainer.calls} == {"Bearer operator"}


def test_hiding_is_retried_when_the_trainer_is_briefly_unavailable(hiding):
    tc, trainer = hiding
    trainer.unavailable = 2
    assert tc.hide_movies([7]).movie_ids == [7]
    assert [method for method, _, _ in trainer.calls] == ["HideMovies"] * 3


@pytest.mark.parametrize(("ids", "message"), [
    (123, "movie ids to hide must be a collection of integer movie ids, got 123"),
    ("123", "movie ids to hide must be a collection"),
    ([1, "2"], "movie ids to hide must be integer movie ids, got '2'"),
    ([False], "must be integer movie ids, got False"),
    ([2**63], "invalid hide request"),
])
def test_hiding_refuses_what_is_not_movie_ids_before_sending(hiding, ids, message):
    tc, trainer = hiding
    with pytest.raises(ConfigurationError, match=message):
        tc.hide_movies(ids)
    with pytest.raises(ConfigurationError, match=message.replace("hide", "unhide")):
        tc.unhide_movies(ids)
    assert trainer.calls == []
