"""A replica's feedback loop (recommender_service.feedback_loop) on a real SQLite event store shared by two
loops, as two replicas on one machine share it: read your writes, following the store, watermarks of
the served version (newer, older, another store's), and each interaction judged once."""

from __future__ import annotations

import time

import pytest

from movierec_common.artifact import InteractionsRecord, VersionMetadata
from movierec_common.event_store import Interaction, OnlineOutcome, open_store
from recommender_service.feedback_loop import FeedbackLoop, served_watermark
from recommender_service.model import LoadedModel
from recommender_service.retrieval import Retriever
from tests.artifacts import tiny_artifact

RETRIEVER = Retriever(tiny_artifact())  # movies 101..130, users "1".."20"


def model(version: int, watermark: int = 0, store_id: str = "") -> LoadedModel:
    trained = InteractionsRecord(store_id=store_id, watermark=watermark) if watermark else None
    return LoadedModel(version, RETRIEVER, VersionMetadata(model_kind="test", interactions=trained), time.time())


def did(event_id: str, user: str, movie: int) -> Interaction:
    return Interaction(event_id, user, movie, None, 1_700_000_000.0)


@pytest.fixture
def replicas(tmp_path):
    """Two loops on one store file, each serving what ``served[i]`` holds."""
    url = f"sqlite:///{tmp_path}/events.sqlite"
    served: list[LoadedModel | None] = [None, None]
    loops = []
    for n in range(2):
        store = open_store(url)
        assert store is not None
        loops.append(FeedbackLoop(store, lambda n=n: served[n]))
    yield loops, served
    for loop in loops:
        loop.store.close()


def test_a_write_is_fresh_at_once_here_and_after_a_follow_there(replicas):
    (here, there), served = replicas
    served[:] = [model(1), model(1)]
    assert here.follow_once() == 0 and there.follow_once() == 0
    here.record([did("a", "alice", 101), did("b", "alice", 102), did("c", "7", 999)], RETRIEVER.movie_indices)
    assert here.fresh_movies("alice", served[0]).tolist() == [101, 102]  # before any follow: read your writes
    assert there.fresh_movies("alice", served[1]).tolist() == []
    assert there.follow_once() == 3
    assert there.fresh_movies("alice", served[1]).tolist() == [101, 102]
    assert there.fresh_movies("7", served[1]).tolist() == [999]  # held as stored; the version ignores it
    assert here.follow_once() == 3  # reads its own writes back: held once
    assert here.status().fresh_interactions == 3 and here.status().followed == 3


def test_each_interaction_is_judged_once_on_each_replica(replicas):
    (here, there), served = replicas
    served[:] = [model(1), model(1)]
    here.follow_once(), there.follow_once()
    rec_here = here.recommended("alice", 1, [101, 105])
    rec_there = there.recommended("alice", 1, [106])
    assert rec_here != rec_there and rec_here.startswith("1-")
    here.record([did("a", "alice", 105)], None)
    here.follow_once(), there.follow_once(), here.follow_once()
    assert here.online.totals() == {1: OnlineOutcome(1, 1)}
    assert there.online.totals() == {}  # its recommendation is still open: one interaction of ten
    for n in range(9):
        there.record([did(f"x{n}", "alice", 120 + n)], None)
    assert there.online.totals() == {1: OnlineOutcome(1, 0)}
    here.follow_once()
    assert here.online.totals() == {1: OnlineOutcome(1, 1)}  # nothing open here any more


def test_a_version_trained_up_to_a_watermark_takes_over_and_a_rollback_reads_again(replicas):
    (here, _), served = replicas
    store_id = here.store.store_id
    served[0] = model(1)
    here.follow_once()
    first = here.record([did("a", "alice", 101), did("b", "alice", 102)], None).watermark
    here.record([did("c", "alice", 103)], None)
    served[0] = model(2, watermark=first, store_id=store_id)
    assert here.fresh_movies("alice", served[0]).tolist() == [103]  # at once, before the follower moves
    here.follow_once()
    assert here.status().fresh_interactions == 1  # what version 2 knows is forgotten

    served[0] = model(1)  # a rollback to a version trained on none of them
    here.follow_once()
    assert here.fresh_movies("alice", served[0]).tolist() == [101, 102, 103]
    assert here.status().fresh_interactions == 3


def test_another_stores_watermark_is_ignored(replicas):
    (here, _), served = replicas
    served[0] = model(1)
    here.follow_once()
    here.record([did("a", "alice", 101)], None)
    foreign = model(2, watermark=10, store_id="another-store")
    served[0] = foreign
    here.follow_once()
    assert served_watermark(foreign, here.store.store_id) == 0
    assert here.fresh_movies("alice", foreign).tolist() == [101]
    assert served_watermark(model(3, watermark=10, store_id=here.store.store_id), here.store.store_id) == 10
