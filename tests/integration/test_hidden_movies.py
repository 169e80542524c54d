"""Operators' hidden movies across replicas, on real servers: a trainer (tokens on) and three recommenders on
one model root, two following it and one held by its own ``--version 1`` (hidden movies apply to every
version, so it hides them too).

Version 1 is a tiny artifact of 30 movies (ids 101-130), so ``Recommend(user, k=30, exclude_seen=False)``
is every movie not hidden: an exact check of what each replica applies. Version 2 is a byte copy renamed
into place, as a publish does. Tests run in file order and share the stack: refuse, hide, load, unhide,
publish, damage and repair.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from clients import RecommenderClient
from movierec.v1 import recommender_pb2, recommender_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from movierec_common.artifact import VersionMetadata
from movierec_common.hidden_movies import HIDDEN_FILE, MAX_IDS_PER_CALL
from tests.artifacts import tiny_artifact
from tests.load import RotatingLoad
from tests.servers import start_recommender, start_trainer
from tests.waiting import until, wait_for_version
from trainer_service.publisher import publish

pytestmark = pytest.mark.slow

TOKEN = "hidden-token-0123456789abcdef"
POLL_SECONDS = 0.5  # what tests.servers.start_recommender passes
ARTIFACT = tiny_artifact(seed=1)
EVERY_MOVIE = set(ARTIFACT.movie_ids.tolist())
HIDDEN = {101, 105, 110, 115, 120, 125, 130}
UNHIDDEN = {105, 130}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("hidden")
    root = base / "models"
    publish(str(root), ARTIFACT, VersionMetadata(model_kind="two_tower"))
    stack: dict = {"base": base, "root": root, "started": []}

    def launch(name: str, *extra: str):
        (base / name).mkdir()
        server = start_recommender(root, base / name, *extra)
        stack["started"].append(server)
        return server

    try:
        # Each recommender warms TensorFlow up in its helper after it listens: they warm while the trainer starts.
        stack["replicas"] = [launch("follower0"), launch("follower1"), launch("flagged", "--version", "1")]
        stack["trainer"] = start_trainer(root, base, env={"MOVIEREC_TOKENS": TOKEN, "MOVIELENS_DIR": ""})
        stack["started"].append(stack["trainer"])

        def serving(replica) -> None:
            with RecommenderClient(replica.address, timeout=10) as rc:
                rc.wait_until_serving(timeout=90)

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(serving, stack["replicas"]))
        with grpc.insecure_channel(stack["trainer"].address) as channel:
            stack["trainer_stub"] = trainer_pb2_grpc.TrainerStub(channel)
            yield stack
    finally:
        for server in stack["started"]:  # all stop side by side
            if server.process.poll() is None:
                server.process.send_signal(signal.SIGTERM)
        for server in stack["started"]:
            server.terminate()


def _call(stack, method: str, movie_ids=(), token: str | None = TOKEN):
    stub = stack["trainer_stub"]
    request = (trainer_pb2.ListHiddenMoviesRequest() if method == "ListHiddenMovies" else
               trainer_pb2.HideMoviesRequest(movie_ids=list(movie_ids)) if method == "HideMovies" else
               trainer_pb2.UnhideMoviesRequest(movie_ids=list(movie_ids)))
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return getattr(stub, method)(request, timeout=10, metadata=metadata)


def _status(replica) -> recommender_pb2.ModelStatus:
    with grpc.insecure_channel(replica.address) as channel:
        return recommender_pb2_grpc.RecommenderStub(channel).GetModelStatus(
            recommender_pb2.GetModelStatusRequest(), timeout=5)


def _every_movie_answered(replica) -> tuple[set[int], int]:
    """What the replica may answer with: all of a user's answer at k = the catalogue, seen movies included."""
    with RecommenderClient(replica.address, timeout=5) as rc:
        response = rc.recommend("1", k=len(EVERY_MOVIE), exclude_seen=False)
    return {item.movie_id for item in response.items}, response.model_version


def _until_applied(stack, sequence: int, hidden: set[int], timeout: float = 30.0) -> list[float]:
    """Waits until each replica reports ``sequence`` and answers with every movie but ``hidden``; returns
    the seconds each took from now."""
    started = time.monotonic()

    def applied(replica) -> float:
        until(lambda: _status(replica).hidden_sequence == sequence, timeout,
              f"{replica.address} reporting hidden sequence {sequence}")
        until(lambda: _every_movie_answered(replica)[0] == EVERY_MOVIE - hidden, timeout,
              f"{replica.address} answering with every movie but {sorted(hidden)}")
        return time.monotonic() - started

    with ThreadPoolExecutor(len(stack["replicas"])) as pool:
        return list(pool.map(applied, stack["replicas"]))


def test_changing_hidden_movies_needs_a_token_and_bounded_requests_and_listing_is_a_read(stack):
    for token in (None, "wrong-token-0123456789"):
        for method in ("HideMovies", "UnhideMovies"):
            with pytest.raises(grpc.RpcError) as refused:
                _call(stack, method, [101], token=token)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        listing = _call(stack, "ListHiddenMovies", token=token)  # reading stays open
        assert (list(listing.movie_ids), listing.sequence) == ([], 0)
    for movie_ids, message in (([], "no movie ids to hide: give at least one"),
                               (range(MAX_IDS_PER_CALL + 1), "10,001 movie ids in one call; at most 10,000")):
        with pytest.raises(grpc.RpcError) as refused:
            _call(stack, "HideMovies", movie_ids)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT and message in refused.value.details()
    assert not (stack["root"] / HIDDEN_FILE).exists()
    assert all(_status(r).hidden_sequence == 0 and _status(r).hidden_movies == 0 for r in stack["replicas"])


def test_a_hide_reaches_every_replica_within_a_poll_and_a_second_and_no_answer_under_load_holds_one(stack):
    assert all(_every_movie_answered(r)[0] == EVERY_MOVIE for r in stack["replicas"])
    hidden = _call(stack, "HideMovies", sorted(HIDDEN, reverse=True))
    took = _until_applied(stack, hidden.sequence, HIDDEN)
    print(f"\nhidden movies: every replica applied them {max(took):.2f}s after HideMovies returned "
          f"(each: {', '.join(f'{t:.2f}s' for t in took)}; poll {POLL_SECONDS}s)")
    assert max(took) <= POLL_SECONDS + 1.0
    assert list(hidden.movie_ids) == sorted(HIDDEN) and hidden.sequence > 0
    assert _call(stack, "ListHiddenMovies", token=None) == hidden
    for replica in stack["replicas"]:
        status = _status(replica)
        assert (status.hidden_movies, status.hidden_sequence, status.hidden_problem) == (len(HIDDEN),
                                                                                        hidden.sequence, "")

    def check(response, user, k, exclude) -> str:
        shown = HIDDEN & {item.movie_id for item in response.items}
        return f"answered with hidden movies {sorted(shown)}" if shown else ""

    addresses = ",".join(r.address for r in stack["replicas"])
    with RotatingLoad(addresses, ARTIFACT.user_ids, threads=2, check=check) as load:
        until(lambda: load.calls + len(load.failures) >= 600, 60, "600 calls under load")
    assert load.failures == [], load.failures[:5]
    load.assert_rotated()  # every user, cold start, k beyond the rankings, every exclude_seen


def test_unhide_brings_movies_back_on_every_replica(stack):
    before = _call(stack, "ListHiddenMovies").sequence
    unhidden = _call(stack, "UnhideMovies", [*UNHIDDEN, 999])  # 999 was never hidden: ignored
    assert set(unhidden.movie_ids) == HIDDEN - UNHIDDEN and unhidden.sequence > before
    _until_applied(stack, unhidden.sequence, HIDDEN - UNHIDDEN)


def test_a_version_published_afterwards_still_hides_them(stack):
    root = stack["root"]
    shutil.copytree(root / "1", root / ".tmp-2-copy")
    os.rename(root / ".tmp-2-copy", root / "2")
    followers, flagged = stack["replicas"][:2], stack["replicas"][2]
    for replica in followers:
        with RecommenderClient(replica.address, timeout=5) as rc:
            wait_for_version(rc, 2, timeout=60)
    for replica in followers:
        assert _every_movie_answered(replica) == (EVERY_MOVIE - (HIDDEN - UNHIDDEN), 2)
    assert _every_movie_answered(flagged) == (EVERY_MOVIE - (HIDDEN - UNHIDDEN), 1)  # held by --version 1


def test_unreadable_rules_keep_the_last_ones_and_every_replica_says_why(stack):
    in_force = _call(stack, "ListHiddenMovies")
    (stack["root"] / HIDDEN_FILE).write_text("{damaged by hand")
    for replica in stack["replicas"]:
        status = until(lambda r=replica: (s := _status(r)).hidden_problem and s, 30,
                       f"{replica.address} reporting the damaged hidden movies")
        assert "is not valid JSON" in status.hidden_problem
        assert "the last hidden movies applied stay in force (5 movies" in status.hidden_problem
        assert (status.hidden_movies, status.hidden_sequence) == (5, in_force.sequence)
        assert _every_movie_answered(replica)[0] == EVERY_MOVIE - (HIDDEN - UNHIDDEN)
    for method in ("ListHiddenMovies", "HideMovies"):  # the trainer does not build on what it cannot read
        with pytest.raises(grpc.RpcError) as refused:
            _call(stack, method, [101])
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "remove it from the model root and hide the movies again" in refused.value.details()

    (stack["root"] / HIDDEN_FILE).unlink()  # the repair
    repaired = _call(stack, "HideMovies", [102])
    assert list(repaired.movie_ids) == [102] and repaired.sequence > in_force.sequence
    _until_applied(stack, repaired.sequence, {102})
    assert all(_status(r).hidden_problem == "" for r in stack["replicas"])
