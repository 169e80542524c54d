"""The retrain policy (trainer_service.retrain_policy): its pure decision, and exactly one job per watermark
with a real JobManager and a real SQLite event store, across a second poll, a second poller and a restart."""

from __future__ import annotations

import threading
import time

import pytest

from movierec_common.event_store import Interaction, open_store
from trainer_service.job_manager import JobManager
from trainer_service.jobs import (
    CANCELLED,
    SUCCEEDED,
    TRIGGER_REQUEST,
    TRIGGER_RETRAIN_AFTER_INTERACTIONS,
    TRIGGER_RETRAIN_EVERY,
    JobResult,
    JobStore,
    TrainSpec,
)
from trainer_service.retrain_policy import (
    PolicySettings,
    RetrainPolicy,
    decide,
    idempotency_key,
    parse_duration,
)

AFTER_5 = PolicySettings(after_interactions=5)
EVERY_MINUTE = PolicySettings(every_seconds=60.0)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("120", 120),
                                               ("1.5h", 5400), (" 30 S ", 30)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-5m", "5 minutes", "m", "1w", "1h30m"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("settings", "latest", "covered", "since", "now", "expected"), [
    (AFTER_5, 4, 0, None, 0.0, None),                                        # 4 new: not yet
    (AFTER_5, 5, 0, None, 0.0, (TRIGGER_RETRAIN_AFTER_INTERACTIONS, 5)),     # the 5th: up to the latest
    (AFTER_5, 12, 5, None, 0.0, (TRIGGER_RETRAIN_AFTER_INTERACTIONS, 12)),
    (AFTER_5, 9, 5, None, 0.0, None),
    (AFTER_5, 5, 5, None, 0.0, None),                                        # the watermark is covered
    (EVERY_MINUTE, 3, 0, 100.0, 159.0, None),                                # not a minute yet
    (EVERY_MINUTE, 3, 0, 100.0, 160.0, (TRIGGER_RETRAIN_EVERY, 3)),
    (EVERY_MINUTE, 3, 3, 100.0, 1000.0, None),                               # time passed, nothing new
    (EVERY_MINUTE, 3, 0, None, 1000.0, None),                                # no start to count from
    (PolicySettings(5, 60.0), 9, 2, 100.0, 1000.0, (TRIGGER_RETRAIN_AFTER_INTERACTIONS, 9)),  # both: the count
    (PolicySettings(5, 60.0), 6, 2, 100.0, 1000.0, (TRIGGER_RETRAIN_EVERY, 6)),
    (PolicySettings(), 100, 0, 0.0, 1000.0, None),                           # off
])
def test_decide(settings, latest, covered, since, now, expected):
    decision = decide(settings, latest=latest, covered=covered, since=since, now=now)
    assert (None if decision is None else (decision.trigger, decision.watermark)) == expected


def _succeed(job, ctx) -> JobResult:
    return JobResult(metrics={}, baseline_metrics={}, evaluation_split="", loss_history=(), published=False,
                     not_published_reason="a test runner publishes nothing")


def _wait(manager: JobManager, job_id: str, states=frozenset({SUCCEEDED}), timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while (job := manager.get(job_id)).state not in states:
        assert time.monotonic() < deadline, f"job {job_id} is {job.state}"
        time.sleep(0.01)
    return job


BASE_SPEC = TrainSpec(model="ease", ratings_path="ratings.data", items_path="items.item", holdout_size=2,
                      idempotency_key="first")


@pytest.fixture
def store(tmp_path):
    opened = open_store(f"sqlite:///{tmp_path}/events.sqlite")
    assert opened is not None
    yield opened
    opened.close()


def _record(store, count: int, start: int = 0) -> None:
    store.record([Interaction(event_id=f"e{n}", user_id=f"u{n % 3}", movie_id=1 + n % 7, rating=None,
                              occurred_at=1_700_000_000.0 + n) for n in range(start, start + count)])


def _manager(root, runner=_succeed, queue_size: int = 4) -> JobManager:
    return JobManager(JobStore(str(root)), runner, queue_size=queue_size)


def _policy(manager, store, settings=AFTER_5, **kwargs) -> RetrainPolicy:
    return RetrainPolicy(settings, manager, store, lambda spec: None, **kwargs)


def _policy_jobs(manager: JobManager) -> list:
    return [job for job in manager.list(1000) if job.trigger != TRIGGER_REQUEST]


def test_one_job_per_watermark_across_polls_and_a_restart(tmp_path, store):
    manager = _manager(tmp_path / "models")
    try:
        policy = _policy(manager, store)
        _record(store, 7)
        assert policy.poll_once() is None  # no successful job yet: nothing to take settings from
        assert manager.list() == []
        first = manager.submit(BASE_SPEC)
        _wait(manager, first.id)

        job = policy.poll_once()
        assert job is not None and job.trigger == TRIGGER_RETRAIN_AFTER_INTERACTIONS
        assert job.interactions_watermark == 7 and job.interactions_store_id == store.store_id
        assert job.spec.interactions and job.spec.interactions_up_to == 7
        assert job.spec.idempotency_key == idempotency_key(7, store.store_id)
        # The last successful job's settings, otherwise unchanged.
        assert (job.spec.model, job.spec.ratings_path, job.spec.holdout_size) == ("ease", "ratings.data", 2)
        _wait(manager, job.id)
        assert policy.poll_once() is None and policy.poll_once() is None  # the same watermark: nothing new
        _record(store, 4, start=7)
        assert policy.poll_once() is None  # 4 past the covered watermark 7
        assert [j.interactions_watermark for j in _policy_jobs(manager)] == [7]
    finally:
        manager.shutdown()

    restarted = _manager(tmp_path / "models")  # the same job records: a trainer restart
    try:
        policy = _policy(restarted, store)
        assert policy.poll_once() is None
        assert [j.interactions_watermark for j in _policy_jobs(restarted)] == [7]
        _record(store, 1, start=11)  # 5 past 7
        job = policy.poll_once()
        assert job is not None and job.interactions_watermark == 12
        assert policy.poll_once() is None
        assert [j.interactions_watermark for j in _policy_jobs(restarted)] == [12, 7]
    finally:
        restarted.shutdown()


def test_a_restart_mid_job_queues_nothing_again(tmp_path, store):
    """A policy job interrupted by a restart fails (as every running job does), and its watermark stays covered."""
    release = threading.Event()

    def blocking(job, ctx):
        if job.trigger != TRIGGER_REQUEST:
            release.wait(10)
        return _succeed(job, ctx)

    manager = _manager(tmp_path / "models", blocking)
    try:
        _wait(manager, manager.submit(BASE_SPEC).id)
        _record(store, 5)
        job = _policy(manager, store).poll_once()
        assert job is not None
        _wait(manager, job.id, frozenset({"RUNNING"}))
        manager.shutdown(timeout=0.1)  # the job is still running, and records nothing more: as when the trainer dies
        restarted = _manager(tmp_path / "models")
        try:
            assert restarted.get(job.id).state == "FAILED"
            assert _policy(restarted, store).poll_once() is None
            assert len(_policy_jobs(restarted)) == 1
        finally:
            restarted.shutdown()
    finally:
        release.set()
        manager.shutdown()


def test_two_pollers_deciding_at_once_queue_one_job(tmp_path, store):
    manager = _manager(tmp_path / "models")
    try:
        _wait(manager, manager.submit(BASE_SPEC).id)
        _record(store, 6)
        both_decided = threading.Barrier(2, timeout=10)
        pollers = [RetrainPolicy(AFTER_5, manager, store, lambda spec: both_decided.wait()) for _ in range(2)]
        found: list = []
        threads = [threading.Thread(target=lambda p=p: found.append(p.poll_once())) for p in pollers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(found) == 2 and found[0] is not None and found[0].id == found[1].id
        assert len(_policy_jobs(manager)) == 1
    finally:
        manager.shutdown()


def test_retrain_every(tmp_path, store):
    manager = _manager(tmp_path / "models")
    offset = [0.0]
    try:
        first = _wait(manager, manager.submit(BASE_SPEC).id)
        policy = _policy(manager, store, EVERY_MINUTE, clock=lambda: time.time() + offset[0])
        assert policy.poll_once() is None  # nothing recorded
        _record(store, 2)
        assert policy.poll_once() is None  # a minute has not passed since the job finished
        offset[0] = first.finished_at + 61 - time.time()
        job = policy.poll_once()
        assert job is not None and job.trigger == TRIGGER_RETRAIN_EVERY and job.interactions_watermark == 2
        _wait(manager, job.id)
        assert policy.poll_once() is None  # nothing new since
        _record(store, 1, start=2)
        offset[0] = job.created_at + 30 - time.time()
        assert policy.poll_once() is None  # new, but not a minute after the last policy job
        offset[0] = job.created_at + 61 - time.time()
        again = policy.poll_once()
        assert again is not None and again.interactions_watermark == 3
    finally:
        manager.shutdown()


def test_a_full_queue_or_a_store_that_is_down_is_tried_again(tmp_path, store):
    release = threading.Event()

    def blocking(job, ctx):
        if job.spec.idempotency_key == "blocker":
            release.wait(10)
        return _succeed(job, ctx)

    manager = _manager(tmp_path / "models", blocking, queue_size=1)
    try:
        _wait(manager, manager.submit(BASE_SPEC).id)
        blocker = manager.submit(TrainSpec(model="ease", idempotency_key="blocker"))
        _wait(manager, blocker.id, frozenset({"RUNNING"}))
        waiting = manager.submit(TrainSpec(model="ease", idempotency_key="waiting"))  # the queue is full now
        _record(store, 5)
        policy = _policy(manager, store)
        assert policy.poll_once() is None and _policy_jobs(manager) == []
        assert manager.cancel(waiting.id).state == CANCELLED
        job = policy.poll_once()
        assert job is not None and job.interactions_watermark == 5
        release.set()
        _wait(manager, job.id)
    finally:
        release.set()
        manager.shutdown()
    down = open_store(f"sqlite:///{tmp_path}/other.sqlite")
    assert down is not None
    down.close()  # every call raises StoreUnavailable
    manager = _manager(tmp_path / "models")
    try:
        assert _policy(manager, down).poll_once() is None
    finally:
        manager.shutdown()


def test_the_thread_polls_until_stopped(tmp_path, store):
    manager = _manager(tmp_path / "models")
    policy = _policy(manager, store, poll_seconds=0.01)
    try:
        _wait(manager, manager.submit(BASE_SPEC).id)
        policy.start()
        _record(store, 5)
        deadline = time.monotonic() + 10
        while not _policy_jobs(manager):
            assert time.monotonic() < deadline, "the policy thread queued nothing"
            time.sleep(0.01)
    finally:
        policy.stop()
        manager.shutdown()
    assert policy._thread is not None and not policy._thread.is_alive()
