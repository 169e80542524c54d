"""Bad input gets the documented status code and a message a person can act
on, and the servers keep serving afterwards."""

from __future__ import annotations

import pytest

from clients import InvalidArgument, NotFound, RecommenderClient, TrainerClient


@pytest.fixture(scope="module")
def clients(small_stack):
    with TrainerClient(small_stack["trainer"].address, timeout=30) as tc, \
            RecommenderClient(small_stack["recommender"].address, timeout=10) as rc:
        yield tc, rc


@pytest.mark.parametrize("user_id, k, fragment", [
    ("", 10, "user_id is empty"),
    ("   ", 10, "user_id is empty"),
    ("x" * 300, 10, "longer than 256 bytes"),
    ("42", 0, "k must be between 1 and 1000, got 0"),
    ("42", -3, "k must be between 1 and 1000"),
    ("42", 1_000_000, "k must be between 1 and 1000, got 1000000"),
])
def test_recommend_rejects_bad_arguments(clients, user_id, k, fragment):
    _, rc = clients
    with pytest.raises(InvalidArgument) as caught:
        rc.recommend(user_id, k=k)
    assert fragment in caught.value.details


def test_unknown_user_gets_popularity_flagged_as_cold_start(clients):
    _, rc = clients
    recs = rc.recommend("no-such-user", k=5)
    assert recs.cold_start and len(recs.items) == 5
    scores = [item.score for item in recs.items]
    assert scores == sorted(scores, reverse=True)


def test_similar_items_of_unknown_movie_is_not_found(clients):
    _, rc = clients
    with pytest.raises(NotFound) as caught:
        rc.similar_items(999_999, k=5)
    assert "movie 999999" in caught.value.details


def test_unknown_job_is_not_found(clients):
    tc, _ = clients
    for call in (tc.get_job, tc.cancel_job):
        with pytest.raises(NotFound) as caught:
            call("job-does-not-exist")
        assert "no job with id" in caught.value.details
    with pytest.raises(NotFound):
        list(tc.watch_job("job-does-not-exist", reconnect=False))


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(model="three_tower"), "unknown model kind 'three_tower'; choose one of: two_tower"),
    (dict(model=""), "model is required"),
    (dict(model="two_tower", epochs=100_000), "epochs"),
    (dict(model="two_tower", hyperparameters={"embedding_dim": 100_000}), "embedding_dim"),
    (dict(model="two_tower", holdout="sometimes"), "unknown holdout 'sometimes'"),
    (dict(model="two_tower", ratings_path="../outside.data", items_path="items.item"), "'..' is not allowed"),
    (dict(model="two_tower", ratings_path="/etc/passwd", items_path="items.item"), "absolute paths are not allowed"),
    (dict(model="two_tower", ratings_path="missing.data", items_path="items.item"), "no such file"),
    (dict(model="two_tower", ratings_path="ratings.data"), "go together"),
])
def test_train_rejects_bad_requests(clients, kwargs, fragment):
    tc, _ = clients
    with pytest.raises(InvalidArgument) as caught:
        tc.train(**kwargs)
    assert fragment in caught.value.details


def test_a_malformed_dataset_fails_its_job_naming_file_and_line(clients, small_stack):
    """Train does not read dataset files on its request thread; the job does, and fails with the parser's
    message. One malformed file is enough here: every way a file can be malformed is the parser's unit
    tests' (test_data.py, test_formats.py); this shows the message reaches the caller."""
    tc, _ = clients
    (small_stack["data_root"] / "bad_columns.data").write_text("1\t1\t5\t880000000\n1\t2\t5\n")
    queued = tc.train("two_tower", ratings_path="bad_columns.data", items_path="items.item")
    job = tc.wait_for_job(queued.id, timeout=60)
    assert job.state == "FAILED", job
    assert "bad_columns.data:2" in job.error and "expected 4" in job.error, job.error


def test_servers_still_serve_after_bad_input(clients, small_stack):
    tc, rc = clients
    assert small_stack["trainer"].alive() and small_stack["recommender"].alive()
    recs = rc.recommend("1", k=5)
    assert len(recs.items) == 5 and recs.model_version >= 1
    assert tc.get_job(small_stack["first_job"].id).state == "SUCCEEDED"
