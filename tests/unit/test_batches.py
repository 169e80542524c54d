"""A RecommendBatch's work (recommender_service.batches): what it costs in live scoring, and that it
stops between users when told to."""

from __future__ import annotations

import numpy as np
import pytest

from recommender_service.batches import check_live_cost, live_users, recommend_batch
from recommender_service.errors import CallEnded, TooCostly
from recommender_service.movie_filter import MovieFilter
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


def test_exclusions_keep_ranked_users_off_the_live_count_and_a_subset_costs_only_its_movies():
    """Hidden movies or excluded ids leave a ranked user answered by the ranking (a batch of a million-movie
    catalogue stays within its limit once an operator hides a movie); genres, years or an id list make
    every known user live, each costing the subset's movies, not the catalogue's."""
    art = tiny_artifact(users=6, items=120)
    ranked = Retriever(art)
    known = [str(u) for u in art.user_ids]
    hidden = np.array([3, 4], dtype=np.int64)
    excluding = ranked.resolve(MovieFilter.checked(exclude_movie_ids=art.movie_ids[:5]), hidden)
    assert live_users(ranked, known, 10, True, excluding) == 0
    assert ranked.live_cost(excluding) == art.num_items
    only = ranked.resolve(MovieFilter.checked(only_movie_ids=art.movie_ids[:30]), hidden)
    assert live_users(ranked, known + ["nobody"], 10, True, only) == len(known)
    assert ranked.live_cost(only) == 30
    with pytest.raises(TooCostly, match="6 users x 30 movies = 180 scores"):
        check_live_cost(ranked, known, 10, True, 179, only)
    check_live_cost(ranked, known, 10, True, 180, only)


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
