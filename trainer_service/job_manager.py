"""Runs training jobs one at a time from a bounded queue.

One job at a time because training saturates this machine's cores; a bounded
queue because an unbounded one turns a burst of requests into hours of work
nobody is waiting for any more. Watchers block on a condition variable and are
woken on every change, so progress streams without polling the store.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from movierec_common.logs import event
from movierec_common.metrics import job_progress, job_queued, job_reached, job_started, jobs_queued
from trainer_service.errors import Cancelled, IdempotencyConflict, JobNotFound, QueueFull
from trainer_service.jobs import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TRIGGER_REQUEST,
    JobRecord,
    JobResult,
    JobStore,
    TrainSpec,
    new_job_id,
)

log = logging.getLogger(__name__)


class JobContext:
    """What a running job may do: report progress and ask whether to stop."""

    def __init__(self, manager: JobManager, job_id: str, cancel: threading.Event):
        self._manager = manager
        self.job_id = job_id
        self._cancel = cancel

    def report(self, **fields: Any) -> None:
        self._manager._update(self.job_id, persist=False, **fields)

    def should_stop(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        """Raises ``Cancelled`` when the job was cancelled: the runner's check between steps."""
        if self._cancel.is_set():
            raise Cancelled("cancelled")


Runner = Callable[[JobRecord, JobContext], JobResult]


class JobManager:
    def __init__(self, store: JobStore, runner: Runner, *, queue_size: int = 4):
        self._store = store
        self._runner = runner
        self._queue_size = queue_size
        self._changed = threading.Condition()
        self._jobs: dict[str, JobRecord] = {}
        self._revision: dict[str, int] = {}
        self._keys: dict[str, str] = {}
        self._queue: deque[str] = deque()
        self._cancel_events: dict[str, threading.Event] = {}
        self._closing = False
        self._recover()
        self._worker = threading.Thread(target=self._work, name="trainer-worker", daemon=True)
        self._worker.start()

    # -- public API ---------------------------------------------------------

    def submit(self, spec: TrainSpec, *, trigger: str = TRIGGER_REQUEST, interactions_watermark: int = 0,
               interactions_store_id: str = "") -> JobRecord:
        """Queues ``spec`` (or returns the job its idempotency key names). ``trigger`` says what queued it; the
        retrain policy also names the store position its job trains up to, and the store."""
        with self._changed:
            if self._closing:
                raise QueueFull("the trainer is shutting down")
            if spec.idempotency_key and spec.idempotency_key in self._keys:
                existing = self._jobs[self._keys[spec.idempotency_key]]
                if existing.spec != spec:
                    raise IdempotencyConflict(
                        f"idempotency key {spec.idempotency_key!r} was already used for job {existing.id} "
                        "with a different request"
                    )
                return copy.deepcopy(existing)
            if len(self._queue) >= self._queue_size:
                raise QueueFull(
                    f"the training queue is full ({self._queue_size} jobs waiting); retry after a job finishes"
                )
            job = JobRecord(id=new_job_id(), spec=spec, trigger=trigger, interactions_watermark=interactions_watermark,
                            interactions_store_id=interactions_store_id)
            self._jobs[job.id] = job
            self._revision[job.id] = 0
            self._cancel_events[job.id] = threading.Event()
            if spec.idempotency_key:
                self._keys[spec.idempotency_key] = job.id
            self._queue.append(job.id)
            job_queued(len(self._queue))
            self._store.save(job)
            self._changed.notify_all()
            event(log, "job queued", job_id=job.id, model=spec.model, queue_length=len(self._queue), trigger=trigger)
            return copy.deepcopy(job)

    def get(self, job_id: str) -> JobRecord:
        with self._changed:
            return copy.deepcopy(self._require(job_id))

    def list(self, limit: int = 50) -> list[JobRecord]:
        with self._changed:
            jobs = sorted(self._jobs.values(), key=lambda j: j.created_at, reverse=True)
            return [copy.deepcopy(j) for j in jobs[:limit]]

    def newest(self, where: Callable[[JobRecord], bool]) -> JobRecord | None:
        """The most recently created job ``where`` holds for (a copy), or None."""
        with self._changed:
            found = max((j for j in self._jobs.values() if where(j)), key=lambda j: j.created_at, default=None)
            return copy.deepcopy(found)

    def cancel(self, job_id: str) -> JobRecord:
        with self._changed:
            job = self._require(job_id)
            if job.done:
                return copy.deepcopy(job)
            self._cancel_events[job_id].set()
            if job.state == QUEUED:
                self._queue.remove(job_id)
                jobs_queued(len(self._queue))
                self._finish(job, CANCELLED, error="cancelled before it started")
            event(log, "job cancel requested", job_id=job_id)
            return copy.deepcopy(job)

    def watch(self, job_id: str, is_active: Callable[[], bool] = lambda: True,
              heartbeat: float = 0.5) -> Iterator[JobRecord]:
        """Yields the job now and after every change, until it ends or the caller leaves."""
        seen = -1
        while True:
            with self._changed:
                job = self._require(job_id)
                if self._revision[job_id] == seen:
                    self._changed.wait(heartbeat)
                    job = self._jobs[job_id]
                if self._revision[job_id] == seen:
                    if not is_active() or self._closing:
                        return
                    continue
                seen = self._revision[job_id]
                snapshot = copy.deepcopy(job)
            yield snapshot
            if snapshot.done or not is_active():
                return

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancels queued and running jobs and waits for the worker to let go."""
        with self._changed:
            self._closing = True
            for job_id in list(self._queue):
                self._finish(self._jobs[job_id], CANCELLED, error="cancelled: the trainer shut down")
            self._queue.clear()
            jobs_queued(0)
            for job in self._jobs.values():
                if job.state == RUNNING:
                    self._cancel_events[job.id].set()
            self._changed.notify_all()
        self._worker.join(timeout)
        if self._worker.is_alive():
            event(log, "the running job did not stop within the shutdown timeout", logging.WARNING,
                  timeout_seconds=timeout)

    # -- internals ----------------------------------------------------------

    def _require(self, job_id: str) -> JobRecord:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def _recover(self) -> None:
        """Loads history; a job that was queued or running when the trainer died is FAILED."""
        for job in self._store.load_all():
            if not job.done:
                was = job.state.lower()
                job.state = FAILED
                job_reached(FAILED)
                job.phase = "done"
                job.error = f"interrupted: the trainer stopped while the job was {was}"
                job.finished_at = time.time()
                self._store.save(job)
                event(log, "job interrupted by restart", logging.WARNING, job_id=job.id)
            self._jobs[job.id] = job
            self._revision[job.id] = 0
            self._cancel_events[job.id] = threading.Event()
            if job.spec.idempotency_key:
                self._keys[job.spec.idempotency_key] = job.id

    def _announce(self, job: JobRecord, *, persist: bool = True) -> None:
        """Caller holds the lock: bump the job's revision, store it, wake watchers."""
        self._revision[job.id] += 1
        if persist:
            self._store.save(job)
        self._changed.notify_all()

    def _update(self, job_id: str, *, persist: bool, **fields: Any) -> None:
        with self._changed:
            job = self._jobs[job_id]
            for name, value in fields.items():
                setattr(job, name, value)
            self._announce(job, persist=persist)
        job_progress(fields)

    def _finish(self, job: JobRecord, state: str, **fields: Any) -> None:
        """Caller holds the lock."""
        for name, value in fields.items():
            setattr(job, name, value)
        job.state = state
        job_reached(state)
        job.phase = "done"
        job.finished_at = time.time()
        self._announce(job)
        event(log, "job finished", job_id=job.id, state=state, model_version=job.model_version, error=job.error or None)

    def _next(self) -> JobRecord | None:
        with self._changed:
            while not self._queue and not self._closing:
                self._changed.wait()
            if self._closing:
                return None
            job = self._jobs[self._queue.popleft()]
            job.state = RUNNING
            job_started(len(self._queue))
            job.phase = "starting"
            job.started_at = time.time()
            self._announce(job)
            return job

    def _work(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            event(log, "job started", job_id=job.id, model=job.spec.model)
            context = JobContext(self, job.id, self._cancel_events[job.id])
            try:
                result = self._runner(copy.deepcopy(job), context)
            except Cancelled:
                with self._changed:
                    self._finish(job, CANCELLED, error="cancelled while running; nothing was published")
            except Exception as exc:  # the job fails, never the server
                event(log, "job failed", logging.WARNING, exc_info=True, job_id=job.id)
                with self._changed:
                    self._finish(job, FAILED, error=str(exc) or type(exc).__name__)
            else:
                with self._changed:
                    result.apply_to(job)
                    self._finish(job, SUCCEEDED)
