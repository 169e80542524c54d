"""The interaction event store (movierec_common.event_store): every rule on both engines, SQLite in a
temporary file and a real PostgreSQL server (tests/postgres.py, never a mock)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import psycopg
import pytest

from movierec_common.event_store import (
    SCHEMA_VERSION,
    EventConflict,
    IncompatibleStore,
    Interaction,
    OnlineOutcome,
    StoreUnavailable,
    default_url,
    open_store,
)
from movierec_common.postgres_events import PostgresEventStore
from movierec_common.sqlite_events import SqliteEventStore


def _batch(prefix: str, count: int, user: str = "u1", rating: float | None = 4.0) -> list[Interaction]:
    return [Interaction(event_id=f"{prefix}-{i}", user_id=user, movie_id=100 + i, rating=rating,
                        occurred_at=1_700_000_000.25 + i) for i in range(count)]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state/events.sqlite"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url):
    opened = open_store(store_url)
    assert opened is not None
    yield opened
    opened.close()


def _everything(store) -> list:
    return store.read_after(0, 1_000_000)


def _raw_execute(url: str, statement: str) -> None:
    """Runs one statement on the store's database behind its back."""
    if url.startswith("sqlite:"):
        with sqlite3.connect(url[len("sqlite://"):]) as connection:
            connection.execute(statement)
    else:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(statement.encode())


def test_round_trip_in_store_order(store):
    first = _batch("a", 3) + [Interaction("a-none", "alice", 7, None, 1.5, recommendation_id="rec-1")]
    outcome = store.record(first)
    assert (outcome.stored, outcome.duplicates) == (4, 0)
    assert outcome.watermark == store.latest_sequence()
    second = store.record(_batch("b", 2, user="bob"))
    assert second.watermark > outcome.watermark

    rows = _everything(store)
    assert [row.interaction for row in rows] == first + _batch("b", 2, user="bob")  # batch order kept
    assert list(outcome.rows) + list(second.rows) == rows  # the writer learns each new row's sequence
    sequences = [row.sequence for row in rows]
    assert sequences == sorted(set(sequences)) and sequences[-1] == second.watermark
    assert [row.interaction for row in store.read_after(outcome.watermark, 10)] == _batch("b", 2, user="bob")
    assert [row.sequence for row in store.read_after(0, 2)] == sequences[:2]
    assert store.read_after(second.watermark, 10) == []
    resent = store.record(_batch("b", 3, user="bob"))  # two duplicates, one new
    assert [row.interaction for row in resent.rows] == _batch("b", 3, user="bob")[2:]
    assert resent.rows[0].sequence == resent.watermark == store.read_after(second.watermark, 5)[0].sequence


def test_an_empty_store(store):
    assert store.latest_sequence() == 0
    assert store.read_after(0, 10) == []
    assert store.record([]).watermark == 0


def test_a_store_keeps_one_identity_and_another_store_has_its_own(store_url, tmp_path):
    first = open_store(store_url)
    assert first is not None
    identity = first.store_id
    assert len(identity) == 32 and int(identity, 16) >= 0
    first.close()
    again = open_store(store_url)
    assert again is not None and again.store_id == identity  # kept in the store, not made per opener
    again.close()
    other = open_store(f"sqlite:///{tmp_path}/other/events.sqlite")
    assert other is not None and other.store_id != identity
    other.close()


def test_read_up_to_pages_through_a_watermark(store):
    store.record(_batch("a", 7))
    middle = store.record(_batch("b", 5)).watermark
    store.record(_batch("c", 3))
    pages = list(store.read_up_to(middle, page=4))
    assert [len(page) for page in pages] == [4, 4, 4]
    rows = [row for page in pages for row in page]
    assert [row.interaction for row in rows] == _batch("a", 7) + _batch("b", 5)
    assert rows[-1].sequence == middle
    assert list(store.read_up_to(0)) == []


def test_online_outcomes_are_each_replicas_latest_totals_summed_per_version(store):
    assert store.online_outcomes() == {}
    store.report_online("replica-a", {3: OnlineOutcome(10, 4), 4: OnlineOutcome(2, 1)})
    store.report_online("replica-b", {3: OnlineOutcome(5, 1)})
    store.report_online("replica-a", {3: OnlineOutcome(12, 5)})  # running totals: replaces its 10/4
    store.report_online("replica-c", {})
    outcomes = store.online_outcomes()
    assert outcomes == {3: OnlineOutcome(17, 6), 4: OnlineOutcome(2, 1)}
    assert outcomes[3].hit_rate == pytest.approx(6 / 17) and OnlineOutcome().hit_rate == 0.0


def test_follow_after_reads_what_read_after_reads_in_brief(store):
    store.record(_batch("a", 3) + _batch("b", 2, user="bob"))
    full = store.read_after(1, 10)
    assert [tuple(row) for row in store.follow_after(1, 10)] == [
        (row.sequence, row.interaction.user_id, row.interaction.movie_id) for row in full]
    assert [tuple(row) for row in store.follow_after(0, 2)] == [(1, "u1", 100), (2, "u1", 101)]


def test_a_resend_stores_nothing(store):
    batch = _batch("r", 5)
    first = store.record(batch)
    again = store.record(batch[2:] + _batch("s", 1))
    assert (again.stored, again.duplicates) == (1, 3)
    assert again.watermark == store.latest_sequence() > first.watermark
    assert [row.interaction for row in _everything(store)] == batch + _batch("s", 1)


def test_a_conflicting_resend_stores_nothing_of_its_batch(store):
    store.record(_batch("c", 2))
    before = _everything(store)
    changed = Interaction("c-1", "u1", 101, 1.0, 1_700_000_001.25)  # same id, another rating
    with pytest.raises(EventConflict) as raised:
        store.record(_batch("n", 2) + [changed] + _batch("m", 1))
    assert (raised.value.event_id, raised.value.index) == ("c-1", 2)
    assert "c-1" in str(raised.value)
    assert _everything(store) == before  # the first write stands, nothing of the batch is stored
    assert store.record(_batch("n", 2)).stored == 2  # and the store still writes


def test_duplicates_within_one_batch(store):
    twice = _batch("d", 2) + _batch("d", 1)
    outcome = store.record(twice)
    assert (outcome.stored, outcome.duplicates) == (2, 1)
    assert [row.interaction for row in _everything(store)] == _batch("d", 2)

    other = Interaction("x-0", "u1", 5, None, 2.0)
    with pytest.raises(EventConflict) as raised:
        store.record([other, Interaction("y-0", "u1", 6, None, 2.0), Interaction("x-0", "u1", 5, 3.5, 2.0)])
    assert (raised.value.event_id, raised.value.index) == ("x-0", 2)
    assert len(_everything(store)) == 2


def test_concurrent_writers_and_a_follower_see_every_row_once(store):
    """Store order is commit order: a follower polling while 4 threads write never skips a row."""
    writers, batches, size = 4, 15, 20
    done = threading.Event()
    followed: list = []
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            for number in range(batches):
                store.record(_batch(f"w{writer}-{number}", size, user=f"user{writer}"))
        except BaseException as error:
            errors.append(error)

    def follow() -> None:
        watermark = 0
        try:
            while True:
                finished = done.is_set()  # read before the poll: a last poll after the writers ended
                rows = store.read_after(watermark, 37)
                followed.extend(rows)
                if rows:
                    watermark = rows[-1].sequence
                elif finished:
                    return
        except BaseException as error:
            errors.append(error)

    follower = threading.Thread(target=follow)
    follower.start()
    threads = [threading.Thread(target=write, args=(writer,)) for writer in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    follower.join(timeout=30)
    assert not errors, errors
    table = _everything(store)
    assert len(table) == writers * batches * size
    sequences = [row.sequence for row in followed]
    assert all(a < b for a, b in zip(sequences, sequences[1:], strict=False))  # strictly increasing, no repeat
    assert followed == table  # no gap: the union of the polls is the table


def test_concurrent_first_use_creates_the_schema_once(store_url):
    stores = [open_store(store_url) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def first_use(index: int) -> None:
        try:
            barrier.wait()
            stores[index].record(_batch(f"f{index}", 3))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=first_use, args=(index,)) for index in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert not errors, errors
        assert len(_everything(stores[0])) == 12
    finally:
        for opened in stores:
            opened.close()


def test_a_newer_schema_is_refused(store_url):
    first = open_store(store_url)
    first.record(_batch("v", 1))
    first.close()
    _raw_execute(store_url, f"UPDATE movierec_meta SET value = '{SCHEMA_VERSION + 1}' WHERE key = 'schema_version'")
    later = open_store(store_url)
    with pytest.raises(IncompatibleStore, match=f"schema version {SCHEMA_VERSION + 1}"):
        later.read_after(0, 10)
    with pytest.raises(IncompatibleStore):
        later.record(_batch("v", 1))
    later.close()


def test_a_programming_error_is_not_called_unavailability(store):
    wrong = Interaction("p-0", "u1", object(), None, 1.0)  # type: ignore[arg-type]
    with pytest.raises((sqlite3.ProgrammingError, psycopg.ProgrammingError, psycopg.DataError)):
        store.record([wrong])
    assert store.record(_batch("p", 1)).stored == 1


def test_a_closed_store_is_unavailable(store):
    store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        store.record(_batch("z", 1))


# -- SQLite only


def _write_from_a_process(url: str, prefix: str, batches: int, start) -> None:
    start.wait()
    opened = open_store(url)
    for number in range(batches):
        opened.record(_batch(f"{prefix}-{number}", 10, user=prefix))
    opened.close()


def test_two_processes_share_one_sqlite_file(tmp_path):
    """Two replicas on one machine: both start on a new file at once (schema created once) and write."""
    url = f"sqlite:///{tmp_path}/events.sqlite"
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    processes = [context.Process(target=_write_from_a_process, args=(url, f"p{n}", 20, start)) for n in range(2)]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0, 0]
    store = open_store(url)
    rows = _everything(store)
    store.close()
    assert len(rows) == 400 and len({row.interaction.event_id for row in rows}) == 400
    assert [row.sequence for row in rows] == list(range(1, 401))
    with sqlite3.connect(tmp_path / "events.sqlite") as connection:
        meta = connection.execute("SELECT key, value FROM movierec_meta ORDER BY key").fetchall()
    assert [key for key, _ in meta] == ["schema_version", "store_id"], meta  # made once, by one of them
    assert meta[0][1] == str(SCHEMA_VERSION)


def test_sqlite_is_durable_on_commit(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/events.sqlite")
    assert isinstance(store, SqliteEventStore)
    assert store.settings() == {"journal_mode": "wal", "synchronous": 2, "busy_timeout": 10_000}  # 2 = FULL
    store.close()
    with sqlite3.connect(tmp_path / "events.sqlite") as connection:  # WAL is kept in the file
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND "
                                  "tbl_name = 'movierec_interactions' AND sql LIKE '%user_id, sequence%'").fetchall()


def test_a_sqlite_file_that_cannot_be_opened_is_unavailable(tmp_path):
    (tmp_path / "events.sqlite").mkdir()
    store = open_store(f"sqlite:///{tmp_path}/events.sqlite")
    with pytest.raises(StoreUnavailable, match="events.sqlite"):
        store.record(_batch("u", 1))


# -- PostgreSQL only


def test_postgres_stopped_is_unavailable_and_started_again_loses_nothing(postgres_server, postgres_url):
    store = open_store(postgres_url)
    acknowledged = store.record(_batch("before", 50))
    postgres_server.stop("immediate")  # like a crash: recovery replays the WAL
    try:
        with pytest.raises(StoreUnavailable, match="event store postgresql://"):
            store.record(_batch("during", 5))
        with pytest.raises(StoreUnavailable):
            store.read_after(0, 10)
    finally:
        postgres_server.start()
    after = store.record(_batch("after", 5))  # the dead pooled connection is replaced
    rows = _everything(store)
    store.close()
    assert [row.interaction for row in rows] == _batch("before", 50) + _batch("after", 5)
    assert rows[49].sequence == acknowledged.watermark and after.watermark == rows[-1].sequence


def test_a_broken_postgres_connection_is_replaced(postgres_server, postgres_url):
    store = open_store(postgres_url)
    store.record(_batch("k", 1))
    with psycopg.connect(postgres_server.url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'movierec' "
                      "AND pid <> pg_backend_pid()")
    time.sleep(0.05)
    assert store.record(_batch("l", 1)).stored == 1
    assert store.latest_sequence() >= 2
    store.close()


def test_postgres_urls_are_redacted_and_not_dialled_at_open():
    store = open_store("postgresql://movierec:s3cret@db.invalid:5432/events?sslmode=require&password=other")
    assert isinstance(store, PostgresEventStore)
    assert "s3cret" not in store.description and "other" not in store.description
    assert store.description.startswith("postgresql://movierec:***@db.invalid:5432/events")
    assert isinstance(open_store("postgres://u@localhost/x"), PostgresEventStore)


# -- choosing a store


def test_default_url_honours_xdg_state_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_url() == f"sqlite://{tmp_path}/state/movierec/events.sqlite"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_url() == f"sqlite://{tmp_path}/home/.local/state/movierec/events.sqlite"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_url() == f"sqlite://{tmp_path}/home/.local/state/movierec/events.sqlite"


def test_open_store_parses_its_url(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    for default in (None, "", "  "):
        store = open_store(default)
        assert isinstance(store, SqliteEventStore) and store.path == tmp_path / "state/movierec/events.sqlite"
    assert not (tmp_path / "state").exists()  # nothing touched until used
    assert open_store("none") is None and open_store("NONE") is None
    relative = open_store("sqlite:events/local.sqlite")
    assert isinstance(relative, SqliteEventStore) and relative.path == tmp_path / "events/local.sqlite"
    assert relative.record(_batch("rel", 1)).stored == 1 and Path(tmp_path / "events/local.sqlite").is_file()
    relative.close()
    assert open_store(f"sqlite:///{tmp_path}/abs.sqlite").path == tmp_path / "abs.sqlite"
    for bad in ("mysql://db/events", "events.sqlite", "sqlite://host/events.sqlite", "sqlite:", "sqlite:///"):
        with pytest.raises(ValueError, match="sqlite:///") as raised:
            open_store(bad)
        assert repr(bad) in str(raised.value)
    with pytest.raises(ValueError, match="postgresql://"):
        open_store("file:///tmp/x")
