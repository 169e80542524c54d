"""A RecommendBatch's work (recommender_service.batches): what it costs in live scoring, and that it
stops between users when told to."""

from __future__ import annotations

import pytest

from recommender_service.batches import live_users, recommend_batch
from recommender_service.errors import CallEnded
from recommender_service.rankings import PRECOMPUTED_TOP
from recommender_service.retrieval import Retriever
from tests.artifacts import tiny_artifact


def test_only_users_answered_by_a_scan_count_as_live_work():
    art = tiny_artifact(users=6, items=120)
    ranked = Retriever(art)  # every user ranked at load
    unranked = Retriever(art, ranking_budget_bytes=0)  # every known user answered by a scan
    known = [str(u) for u in art.user_ids]
    unknown = ["nobody", "visitor-7"]
    assert live_users(ranked, known + unknown, 10, True) == 0  # table lookups and the popularity list
    assert live_users(ranked, known + unknown, 10, False) == len(known)  # seen movies included: a scan each
    assert live_users(ranked, known + unknown, PRECOMPUTED_TOP + 1, True) == len(known)  # deeper than the table
    assert live_users(unranked, known + unknown + known, 10, True) == 2 * len(known)  # repeats cost again


class StopAfter:
    """A should-stop callable that says stop from its ``calls``-th question on, counting the questions."""

    def __init__(self, calls: int):
        self.calls, self.asked = calls, 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.asked > self.calls


def test_a_batch_stops_between_users_when_told_and_says_how_far_it_got():
    art = tiny_artifact(users=20, items=50)
    retriever = Retriever(art, ranking_budget_bytes=0)
    users = [str(u) for u in art.user_ids]
    stop = StopAfter(3)
    with pytest.raises(CallEnded) as ended:
        recommend_batch(retriever, users, 5, False, stop)
    assert (ended.value.answered, ended.value.total) == (3, 20) and stop.asked == 4
    assert "3 of 20 users" in str(ended.value)

    whole = recommend_batch(retriever, users, 5, False, StopAfter(len(users)))
    assert [r.items for r in whole] == [retriever.recommend(u, 5, False).items for u in users]
