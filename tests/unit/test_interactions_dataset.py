"""Training on recorded interactions (trainer_service.interactions_data): the join's rules on a real event
store (SQLite in a temporary folder, and once on the real PostgreSQL server), and the Train call's refusals."""

from __future__ import annotations

import grpc
import pytest

from movierec.v1 import trainer_pb2
from movierec_common.event_store import Interaction, open_store
from trainer_service import errors
from trainer_service.config import TrainerConfig
from trainer_service.data import load_ratings_files
from trainer_service.interactions_data import UNRATED, add_interactions
from trainer_service.ratings import Ratings
from trainer_service.servicer import TrainerServicer
from trainer_service.splits import make_split
from trainer_service.train_request import spec_from_proto, validate_spec

ITEM = "{id}|Movie {id} (1995)|01-Jan-1995||http://example.invalid|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|1"

# (user, movie, rating, timestamp) in u.data's layout: users 1 and 2, movies 1 to 4.
BASE = [(1, 1, 5, 100), (1, 2, 4, 200), (2, 1, 3, 150)]

# In store order (positions 1..8). Up to position 7, by the rules:
#   1: "1" rates 3 ............. replaced by position 5 (the latest per pair wins)
#   2: "alice", no rating ....... a new user; the rating becomes UNRATED; occurred_at 1001.7 -> 1001
#   3: "2" rates 1 again ........ replaces base rating (2, 1)
#   4: "alice", movie 99 ........ not in the items data: left out, counted
#   5: "1" rates 3 .............. used
#   6: "bob", movie 99 .......... left out, so bob is no user at all
#   7: "01" rates 2 ............. "01" is not "1": a new user
#   8: "1" rates 4 .............. after the watermark: not used
INTERACTIONS = [("1", 3, 4.5, 1000.0), ("alice", 1, None, 1001.7), ("2", 1, 1.0, 1002.0), ("alice", 99, 5.0, 1002.5),
                ("1", 3, 2.0, 1003.0), ("bob", 99, 3.0, 1004.0), ("01", 2, 3.5, 1005.0), ("1", 4, 5.0, 2000.0)]


@pytest.fixture
def base(tmp_path) -> Ratings:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "ratings.data").write_text("".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in BASE))
    (folder / "items.item").write_text("".join(ITEM.format(id=i) + "\n" for i in range(1, 5)))
    return load_ratings_files(str(folder), "ratings.data", "items.item")


def _record(store, rows=INTERACTIONS, prefix="e") -> None:
    store.record([Interaction(event_id=f"{prefix}-{n}", user_id=user, movie_id=movie, rating=rating, occurred_at=when)
                  for n, (user, movie, rating, when) in enumerate(rows)])


def _sqlite(tmp_path, name="events"):
    store = open_store(f"sqlite:///{tmp_path}/{name}.sqlite")
    assert store is not None
    return store


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = (f"sqlite:///{tmp_path}/events.sqlite" if request.param == "sqlite"
           else request.getfixturevalue("postgres_url"))
    opened = open_store(url)
    assert opened is not None
    _record(opened)
    yield opened
    opened.close()


def rows(data: Ratings) -> set[tuple[str, int, float, int]]:
    """The data as (user id, movie id, rating, timestamp) rows."""
    return {(str(data.user_ids[u]), int(data.movie_ids[i]), float(r), int(t))
            for u, i, r, t in zip(data.users, data.items, data.ratings, data.timestamps, strict=True)}


def test_the_join_rules(base, store):
    joined = add_interactions(base, store, 7)

    assert rows(joined.ratings) == {
        ("1", 1, 5.0, 100), ("1", 2, 4.0, 200),  # the base ratings nobody gave again
        ("alice", 1, UNRATED, 1001),             # a new user; no rating given; whole seconds
        ("2", 1, 1.0, 1002),                     # over the base rating (2, 1, 3.0)
        ("1", 3, 2.0, 1003),                     # the later of the two interactions of (1, 3)
        ("01", 2, 3.5, 1005),                    # "01" is a user of its own
    }
    record = joined.record
    assert (record.watermark, record.read, record.used, record.replaced, record.unknown_movies, record.new_users) == \
        (7, 7, 4, 2, 2, 2)
    assert record.store_id == store.store_id and record.store == store.description
    data = joined.ratings
    assert sorted(data.user_ids.tolist()) == ["01", "1", "2", "alice"]  # bob's only interaction was left out
    assert data.user_ids.tolist()[:2] == ["1", "2"]  # the base users keep their indices
    assert len(set(data.user_ids.tolist())) == data.n_users == int(data.users.max()) + 1
    assert data.movie_ids.tolist() == base.movie_ids.tolist()  # the catalogue is the items data's
    assert "interactions" in data.source and data.fingerprint != base.fingerprint


def test_paging_changes_nothing(base, tmp_path):
    store = _sqlite(tmp_path)
    _record(store)
    whole, paged = add_interactions(base, store, 7), add_interactions(base, store, 7, page=2)
    assert rows(whole.ratings) == rows(paged.ratings) and whole.record == paged.record
    assert whole.ratings.fingerprint == paged.ratings.fingerprint


def test_the_watermark_is_honoured(base, tmp_path):
    store = _sqlite(tmp_path)
    _record(store)
    assert ("1", 4, 5.0, 2000) not in rows(add_interactions(base, store, 7).ratings)
    latest = add_interactions(base, store, 0)  # 0: the store's latest
    assert latest.record.watermark == 8 and latest.record.read == 8
    assert ("1", 4, 5.0, 2000) in rows(latest.ratings)
    beyond = add_interactions(base, store, 1000)  # nothing can be numbered at or below the latest later
    assert beyond.record.watermark == 8 and rows(beyond.ratings) == rows(latest.ratings)
    first = add_interactions(base, store, 1)
    assert ("1", 3, 4.5, 1000) in rows(first.ratings) and first.record.read == first.record.used == 1
    with pytest.raises(errors.InvalidRequest, match="up_to"):
        add_interactions(base, store, -1)


def test_interactions_come_in_time_order(base, tmp_path):
    store = _sqlite(tmp_path)
    _record(store)
    data = add_interactions(base, store, 7).ratings
    split = make_split(data, "last_n_per_user", 1, seed=0)
    user_1 = data.user_ids.tolist().index("1")
    held_out = [int(data.movie_ids[data.items[p]]) for p in split.test if data.users[p] == user_1]
    assert held_out == [3]  # rated at 1003, after the base ratings of 100 and 200


def test_the_fingerprint_covers_the_interactions(base, tmp_path):
    store = _sqlite(tmp_path)
    _record(store)
    seven, eight = add_interactions(base, store, 7), add_interactions(base, store, 8)
    assert len({base.fingerprint, seven.ratings.fingerprint, eight.ratings.fingerprint}) == 3
    # The same ratings give the same fingerprint, whichever store numbered them.
    again = _sqlite(tmp_path, "other")
    _record(again, prefix="other")
    assert add_interactions(base, again, 7).ratings.fingerprint == seven.ratings.fingerprint
    # A rating, or a time, changed changes it.
    for name, last in (("rating", ("01", 2, 4.0, 1005.0)), ("time", ("01", 2, 3.5, 1006.0))):
        changed = _sqlite(tmp_path, name)
        _record(changed, [*INTERACTIONS[:6], last])
        assert add_interactions(base, changed, 7).ratings.fingerprint != seven.ratings.fingerprint, name


def test_nothing_used_is_the_base_data(base, tmp_path):
    store = _sqlite(tmp_path)
    _record(store, [("carol", 99, 4.0, 1.0)])
    joined = add_interactions(base, store, 0)
    assert joined.ratings is base  # the same ratings: the same fingerprint, counts and all
    assert (joined.record.read, joined.record.used, joined.record.unknown_movies, joined.record.new_users) == \
        (1, 0, 1, 0)
    empty = add_interactions(base, _sqlite(tmp_path, "empty"), 0)
    assert empty.ratings is base and empty.record.watermark == 0 and empty.record.read == 0


def test_a_store_that_cannot_be_read_fails_the_job_naming_it(base, tmp_path):
    store = _sqlite(tmp_path)
    store.close()  # every later call raises StoreUnavailable
    with pytest.raises(errors.EventStoreUnavailable, match="could not read its interactions.*events.sqlite"):
        add_interactions(base, store, 0)


def _train(**dataset) -> trainer_pb2.TrainRequest:
    return trainer_pb2.TrainRequest(model="ease", dataset=trainer_pb2.DatasetSpec(**dataset))


def test_train_refuses_what_it_can_tell_without_the_store(tmp_path):
    with_store = TrainerConfig(model_root=str(tmp_path / "models"), events=_sqlite(tmp_path))
    without = TrainerConfig(model_root=str(tmp_path / "models"))
    spec = spec_from_proto(_train(interactions=trainer_pb2.InteractionsSpec(include=True, up_to=3)))
    assert spec.interactions and spec.interactions_up_to == 3
    validate_spec(spec, with_store)
    with pytest.raises(errors.InteractionsOff, match="--events none"):
        validate_spec(spec, without)
    assert errors.InteractionsOff.code is grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(errors.InvalidRequest, match="up_to must be 0"):
        validate_spec(spec_from_proto(_train(interactions=trainer_pb2.InteractionsSpec(include=True, up_to=-1))),
                      with_store)
    with pytest.raises(errors.InvalidRequest, match="include is not"):
        validate_spec(spec_from_proto(_train(interactions=trainer_pb2.InteractionsSpec(up_to=3))), with_store)
    fixed = spec_from_proto(trainer_pb2.TrainRequest(model="ease", evaluation=trainer_pb2.EvaluationSpec(holdout="ua"),
                                                     dataset=trainer_pb2.DatasetSpec(
                                                         interactions=trainer_pb2.InteractionsSpec(include=True))))
    with pytest.raises(errors.InvalidRequest, match="fixed split"):
        validate_spec(fixed, with_store)


class _Aborted(Exception):
    pass


class _Context:
    def abort(self, code, details):
        raise _Aborted(code, details)

    def time_remaining(self):
        return None


def test_the_train_call_answers_failed_precondition_without_events(tmp_path):
    service = TrainerServicer(manager=None, config=TrainerConfig(model_root=str(tmp_path / "models")))
    with pytest.raises(_Aborted) as aborted:
        service.Train(_train(interactions=trainer_pb2.InteractionsSpec(include=True)), _Context())
    assert aborted.value.args[0] is grpc.StatusCode.FAILED_PRECONDITION
    assert "--events none" in aborted.value.args[1]
