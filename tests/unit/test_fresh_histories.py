"""Fresh histories (recommender_service.fresh_histories) and the online hit rate
(recommender_service.online_hits): their rules on scripted sequences."""

from __future__ import annotations

import pytest

from movierec_common.event_store import OnlineOutcome
from recommender_service.fresh_histories import FreshHistories
from recommender_service.online_hits import JUDGED_AFTER_INTERACTIONS, JUDGED_AFTER_SECONDS, OnlineHits


def rows(*triples: tuple[int, str, int]) -> list[tuple[int, str, int]]:
    return list(triples)


def test_a_history_is_in_store_order_and_holds_each_sequence_once():
    histories = FreshHistories()
    assert histories.add(rows((5, "u", 50), (7, "u", 70))) == 2
    assert histories.add(rows((6, "u", 60), (7, "u", 70), (5, "u", 50))) == 1  # one late, two already held
    assert histories.movies_after("u", 0).tolist() == [50, 60, 70]
    assert histories.movies_after("u", 5).tolist() == [60, 70]
    assert histories.movies_after("u", 7).tolist() == []
    assert histories.movies_after("nobody", 0).tolist() == []
    counts = histories.counts()
    assert (counts.users, counts.interactions) == (1, 3)


def test_each_user_keeps_their_newest_interactions_only():
    histories = FreshHistories(max_per_user=3)
    histories.add(rows(*((sequence, "u", 100 + sequence) for sequence in range(1, 6))))
    assert histories.movies_after("u", 0).tolist() == [103, 104, 105]
    assert histories.counts().interactions == 3


def test_past_the_total_the_least_recently_active_users_are_forgotten():
    histories = FreshHistories(max_total=4)
    histories.add(rows((1, "a", 1), (2, "a", 2), (3, "b", 3), (4, "c", 4)))
    histories.add(rows((5, "a", 5)))  # a is active again: b is now the least recently active
    assert histories.movies_after("b", 0).tolist() == []
    assert histories.movies_after("a", 0).tolist() == [1, 2, 5]
    assert histories.movies_after("c", 0).tolist() == [4]
    assert histories.counts().interactions == 4


def test_a_version_trained_on_more_takes_over_what_it_knows():
    histories = FreshHistories()
    histories.add(rows((1, "a", 1), (2, "b", 2), (3, "a", 3), (4, "b", 4)))
    assert histories.drop_through(2) == 2
    assert histories.movies_after("a", 0).tolist() == [3] and histories.movies_after("b", 0).tolist() == [4]
    assert histories.drop_through(4) == 2
    assert (histories.counts().users, histories.counts().interactions) == (0, 0)


def test_bounds_must_be_positive():
    with pytest.raises(ValueError):
        FreshHistories(max_total=0)


def test_the_online_hit_rate_on_a_scripted_sequence():
    online = OnlineHits(replica="test")
    now = 1_000.0
    online.recommended("hit", 3, [10, 11, 12], now)
    online.recommended("miss", 3, [20, 21], now)
    online.recommended("late", 3, [30], now)
    online.recommended("v4", 4, [40], now)
    online.recommended("nothing", 4, [], now)  # an empty answer is nothing to judge
    assert online.open == 4

    online.observe("hit", 99, now + 1)  # not one of them: one of the next 10 used up
    online.observe("hit", 11, now + 2)  # one of them: a hit
    assert online.totals() == {3: OnlineOutcome(1, 1)}
    online.observe("hit", 12, now + 3)  # judged already: counts nothing more
    for step in range(JUDGED_AFTER_INTERACTIONS - 1):
        online.observe("miss", 1000 + step, now + 10)
    assert online.totals()[3] == OnlineOutcome(1, 1)  # nine others: still open
    online.observe("miss", 21, now + 11)  # the tenth is a recommended movie: within the window, a hit
    assert online.totals()[3] == OnlineOutcome(2, 2)

    online.recommended("miss", 3, [20], now + 20)
    for step in range(JUDGED_AFTER_INTERACTIONS):
        online.observe("miss", 2000 + step, now + 21)
    online.observe("miss", 20, now + 22)  # an eleventh: too late
    assert online.totals()[3] == OnlineOutcome(3, 2)

    online.expire(now + JUDGED_AFTER_SECONDS - 1)
    assert online.totals()[3] == OnlineOutcome(3, 2)
    online.observe("late", 30, now + JUDGED_AFTER_SECONDS + 5)  # after 24 h: a miss, not a hit
    online.expire(now + JUDGED_AFTER_SECONDS)
    assert online.totals() == {3: OnlineOutcome(4, 2), 4: OnlineOutcome(1, 0)}
    assert online.open == 0 and online.dropped == 0


def test_open_recommendations_are_bounded():
    online = OnlineHits(max_open=3, replica="test")
    for n in range(5):
        online.recommended(f"user{n}", 1, [n], float(n))
    assert online.open == 3 and online.dropped == 2
    online.observe("user0", 0, 10.0)  # dropped before it was judged: counted nowhere
    online.observe("user4", 4, 10.0)
    assert online.totals() == {1: OnlineOutcome(1, 1)}
    by_movies = OnlineHits(max_open_movies=5, replica="test")
    by_movies.recommended("a", 1, [1, 2, 3], 0.0)
    by_movies.recommended("b", 1, [4, 5, 6], 1.0)  # six movies held: a's is dropped
    assert by_movies.open == 1 and by_movies.dropped == 1
    ids = {online.new_id(7) for _ in range(1000)}
    assert len(ids) == 1000 and all(i.startswith("7-") for i in ids)


def test_judged_recommendations_do_not_pile_up():
    online = OnlineHits(replica="test")
    online.recommended("never-acts", 1, [1], 0.0)  # open all day, at the front of the age queue
    for n in range(5000):
        online.recommended(f"user{n}", 1, [n], 1.0)
        online.observe(f"user{n}", n, 2.0)
    assert online.totals() == {1: OnlineOutcome(5000, 5000)} and online.open == 1
    assert len(online._by_age) <= 2 * online.open + 1025
