"""The retrain policy: the trainer queues a job on recorded interactions by itself, every N of them or every T.

``--retrain-after-interactions N`` and/or ``--retrain-every DURATION`` (``90s``, ``15m``, ``2h``, ``1d`` or
plain seconds) start a background thread that asks the event store every :data:`POLL_SECONDS` for its
latest position and decides (:func:`decide`, pure) whether to queue a job:

* **after N interactions**: when the store's latest position is at least N past the *covered* watermark,
  the highest of: the watermark of the last job the policy queued (for this store), and the one the last
  successful job trained on;
* **every DURATION**: when DURATION has passed since the last job the policy queued (or, before its
  first, since the last successful job finished) and there are interactions past the covered watermark.

Interactions are counted as store positions: a PostgreSQL store may skip numbers a failed write took,
so the count may run a little ahead of the rows.

The job has **the settings of the last successful job** (its ``TrainSpec``: kind, data, hyperparameters,
holdout, quality gate) with ``interactions`` included up to the latest position, and the idempotency key
``retrain-after-<position>-<store id>``. Job records and their keys survive restarts (``jobs``), so a
restart, or a second poller, never queues two jobs for one watermark: the second submit returns the job
the first made. It is an ordinary job: the quality gate and ``require_no_regression`` apply as the
settings say (a job trained on more interactions has another dataset fingerprint, so the regression rule
compares it with nothing until versions share its data).

With no successful job yet, the policy logs once and waits. A full queue (RESOURCE_EXHAUSTED), or a store
that is down, is logged and tried again at the next poll. A policy job that failed or was interrupted by
a restart still covers its watermark: the next job comes with the next N interactions (or DURATION).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from movierec_common.event_store import EventStore, IncompatibleStore, StoreUnavailable
from movierec_common.logs import event
from trainer_service.errors import IdempotencyConflict, QueueFull, TrainerError
from trainer_service.job_manager import JobManager
from trainer_service.jobs import (
    POLICY_TRIGGERS,
    SUCCEEDED,
    TRIGGER_RETRAIN_AFTER_INTERACTIONS,
    TRIGGER_RETRAIN_EVERY,
    JobRecord,
    TrainSpec,
)

log = logging.getLogger(__name__)

# How often the policy asks the store for its latest position: one cheap query (the highest sequence).
# Short enough that a job follows its N-th interaction within seconds, long enough to cost nothing.
POLL_SECONDS = 2.0

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``15m``, ``2h``, ``1d`` or ``120`` (plain seconds); ValueError unless positive."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration: use e.g. 90s, 15m, 2h, 1d or plain seconds")
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be positive")
    return seconds


@dataclass(frozen=True)
class PolicySettings:
    """What the flags asked for; None = that rule is off."""

    after_interactions: int | None = None
    every_seconds: float | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.after_interactions or self.every_seconds)

    def describe(self) -> str:
        rules = ([f"after {self.after_interactions:,} interactions"] if self.after_interactions else []) + \
                ([f"every {self.every_seconds:g} s"] if self.every_seconds else [])
        return " or ".join(rules) or "off"


@dataclass(frozen=True)
class Retrain:
    """A job to queue: why, and the store position it trains up to."""

    trigger: str
    watermark: int


def decide(settings: PolicySettings, *, latest: int, covered: int, since: float | None, now: float) -> Retrain | None:
    """Whether to queue a job now, and up to which position (always ``latest``); None = not now.

    ``covered``: the highest watermark already trained on or queued (see the module docstring);
    ``since``: when the last policy job was queued, else when the last successful job finished
    (None: neither, so the time rule waits). Both rules need interactions past ``covered``; when both
    hold, the count names the job.
    """
    if latest <= covered:
        return None
    if settings.after_interactions and latest - covered >= settings.after_interactions:
        return Retrain(TRIGGER_RETRAIN_AFTER_INTERACTIONS, latest)
    if settings.every_seconds and since is not None and now - since >= settings.every_seconds:
        return Retrain(TRIGGER_RETRAIN_EVERY, latest)
    return None


def idempotency_key(watermark: int, store_id: str) -> str:
    """One key per store position of one store: a restart or a second poller finds the job the first queued."""
    return f"retrain-after-{watermark}-{store_id}"


def covered_watermark(last_success: JobRecord | None, last_policy_job: JobRecord | None, store_id: str) -> int:
    """The highest watermark of this store already covered: the last policy job's, the last successful job's."""
    return max([job.interactions_watermark for job in (last_success, last_policy_job)
                if job is not None and job.interactions_store_id == store_id], default=0)


def retrain_spec(base: TrainSpec, watermark: int, store_id: str) -> TrainSpec:
    """The last successful job's settings, with the interactions up to ``watermark`` and the policy's key."""
    return dataclasses.replace(base, interactions=True, interactions_up_to=watermark,
                               idempotency_key=idempotency_key(watermark, store_id))


class RetrainPolicy:
    """The background poller: :meth:`poll_once` is one decision (tests call it), :meth:`start` repeats it."""

    def __init__(self, settings: PolicySettings, manager: JobManager, store: EventStore,
                 validate: Callable[[TrainSpec], None], *, poll_seconds: float = POLL_SECONDS,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self._manager = manager
        self._store = store
        self._validate = validate  # the Train call's checks (train_request.validate_spec and the workers')
        self._poll_seconds = poll_seconds
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._said: dict[str, str] = {}  # condition -> what was logged about it, so each is logged once

    def start(self) -> None:
        event(log, "retrain policy on", rules=self.settings.describe(), store=self._store.description,
              poll_seconds=self._poll_seconds)
        self._thread = threading.Thread(target=self._run, name="retrain-policy", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            try:
                self.poll_once()
            except Exception:  # the policy must outlive any one poll; the next one tries again
                event(log, "retrain policy poll failed", logging.ERROR, exc_info=True)

    def poll_once(self) -> JobRecord | None:
        """One look at the store and the jobs; returns the job queued (or found for its key), if any."""
        last_success = self._manager.newest(lambda job: job.state == SUCCEEDED)
        if last_success is None:
            self._once("waiting", "no successful job yet", "the retrain policy waits for a first successful job, "
                       "whose settings its jobs take")
            return None
        self._clear("waiting")
        try:
            store_id = self._store.store_id
            latest = self._store.latest_sequence()
        except (StoreUnavailable, IncompatibleStore) as exc:
            self._once("store", str(exc), "retrain policy cannot read the event store; trying again at the next poll",
                       logging.WARNING, error=str(exc))
            return None
        if self._clear("store"):
            event(log, "retrain policy reads the event store again", store=self._store.description)
        last_policy_job = self._manager.newest(
            lambda job: job.trigger in POLICY_TRIGGERS and job.interactions_store_id == store_id)
        covered = covered_watermark(last_success, last_policy_job, store_id)
        since = last_policy_job.created_at if last_policy_job is not None else (last_success.finished_at or None)
        self._once("following", f"{store_id}:{covered}", "retrain policy following the event store",
                   store=self._store.description, latest=latest, covered=covered, rules=self.settings.describe())
        decision = decide(self.settings, latest=latest, covered=covered, since=since, now=self._clock())
        if decision is None:
            return None
        return self._queue(decision, last_success, store_id)

    def _queue(self, decision: Retrain, base: JobRecord, store_id: str) -> JobRecord | None:
        spec = retrain_spec(base.spec, decision.watermark, store_id)
        try:
            self._validate(spec)
            job = self._manager.submit(spec, trigger=decision.trigger, interactions_watermark=decision.watermark,
                                       interactions_store_id=store_id)
        except QueueFull as exc:
            self._once("queue", str(decision.watermark), "retrain policy: the queue is full; trying again at the "
                       "next poll", logging.WARNING, watermark=decision.watermark, error=str(exc))
            return None
        except IdempotencyConflict:  # another poller queued this position with other settings: it is covered
            return None
        except TrainerError as exc:  # the settings cannot take interactions (a fixed split, a file gone, ...)
            self._once("refused", base.id, "retrain policy cannot use the last successful job's settings; it waits "
                       "for another successful job", logging.WARNING, job_id=base.id, error=str(exc))
            return None
        self._clear("queue")
        event(log, "retrain policy queued a job", job_id=job.id, trigger=decision.trigger,
              watermark=decision.watermark, settings_of=base.id)
        return job

    def _once(self, condition: str, value: str, message: str, level: int = logging.INFO, **fields: Any) -> None:
        """Logs ``message`` when ``condition`` first takes ``value``, not again while it keeps it."""
        if self._said.get(condition) != value:
            self._said[condition] = value
            event(log, message, level, **fields)

    def _clear(self, condition: str) -> bool:
        """Forgets ``condition`` (it no longer holds); True when it did hold."""
        return self._said.pop(condition, None) is not None
