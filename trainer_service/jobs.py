"""Training jobs as plain records, and the durable store that keeps them.

Job history must survive a trainer restart (operators ask "what happened to
last night's job?"), so every state change is written to
``<model root>/.jobs/<id>.json`` whole: by write-then-rename on a local
folder, by a single PUT on an object store; either way a reader never sees
half a record. The leading dot keeps the folder invisible to serving.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from movierec.v1.vocabulary import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED  # noqa: F401 - re-exported
from movierec.v1.vocabulary import FINAL_JOB_STATES as FINAL_STATES
from movierec_common.model_root import JOBS_DIR, join, list_names, read_bytes, remove_tree, write_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSpec:
    """A validated training request: what to train, on what, and how to judge it."""

    model: str
    ratings_path: str = ""
    items_path: str = ""
    # A MovieLens release by name (data.DATASET_NAMES); "" = the default. Old
    # job records, written before this field, load with the default.
    dataset_name: str = ""
    epochs: int = 0
    hyperparameters: dict[str, float] = field(default_factory=dict)  # only the fields the caller set
    holdout: str = "random"
    holdout_size: int = 10
    seed: int = 0
    idempotency_key: str = ""
    min_validation_recall_at_10: float = 0.0
    require_no_regression: bool = False
    require_beating_baseline: bool = False
    quality_gate_disabled: bool = False
    # Data-parallel workers as requested (0 = the trainer's --workers; closed-form
    # kinds always run on one). What a job ran on is in its metrics ("workers").
    workers: int = 0
    # Publish a refit on all the data (holdout included) with the settings the
    # evaluation run chose; False publishes the evaluated model itself.
    refit: bool = True
    # Add the event store's recorded interactions up to a store position to the base data
    # (interactions_data); up_to 0 = the store's latest when the job starts. Old job records,
    # written before these fields, load as jobs without interactions.
    interactions: bool = False
    interactions_up_to: int = 0


# What queued a job (TrainJob.trigger): a Train call, or the retrain policy (retrain_policy).
TRIGGER_REQUEST = "request"
TRIGGER_RETRAIN_AFTER_INTERACTIONS = "retrain_after_interactions"
TRIGGER_RETRAIN_EVERY = "retrain_every"
POLICY_TRIGGERS = (TRIGGER_RETRAIN_AFTER_INTERACTIONS, TRIGGER_RETRAIN_EVERY)


@dataclass
class JobRecord:
    id: str
    spec: TrainSpec
    state: str = QUEUED
    phase: str = "queued"
    epoch: int = 0
    total_epochs: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    loss: float = 0.0
    elapsed_seconds: float = 0.0
    validation: dict[str, float] = field(default_factory=dict)
    loss_history: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    baseline_metrics: dict[str, float] = field(default_factory=dict)
    evaluation_split: str = ""
    model_version: int = 0
    published: bool = False
    not_published_reason: str = ""
    error: str = ""
    created_at: float = field(default_factory=time.time)
    started_at: float = 0.0
    finished_at: float = 0.0
    # What queued the job (TRIGGER_*); records written before the field read as a request.
    trigger: str = TRIGGER_REQUEST
    # The store position the job's interactions go up to, and the store it numbers (its store_id):
    # set when the job has read them, or from the start for a policy job (which names its position).
    # 0 / "": no interactions (yet).
    interactions_watermark: int = 0
    interactions_store_id: str = ""

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        data = dict(data)
        data["spec"] = TrainSpec(**data["spec"])
        return cls(**data)


@dataclass(frozen=True)
class JobResult:
    """How a job that ran to its end came out: what a runner returns and its record keeps.

    One typed value, applied to the record in one place (``apply_to``, called
    by the job manager), so a runner cannot set arbitrary attributes of the
    record, and an outcome that contradicts itself (published without a
    version, refused without a reason) fails where it is made.
    """

    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    evaluation_split: str
    loss_history: tuple[float, ...]
    published: bool
    model_version: int = 0
    not_published_reason: str = ""

    def __post_init__(self):
        if self.published != (self.model_version > 0):
            raise ValueError(f"a published result names its version and only then (published={self.published}, "
                             f"model_version={self.model_version})")
        if not self.published and not self.not_published_reason:
            raise ValueError("an unpublished result says why")

    def apply_to(self, job: JobRecord) -> None:
        job.metrics = dict(self.metrics)
        job.baseline_metrics = dict(self.baseline_metrics)
        job.evaluation_split = self.evaluation_split
        job.loss_history = list(self.loss_history)
        job.published = self.published
        job.model_version = self.model_version
        job.not_published_reason = self.not_published_reason


def new_job_id() -> str:
    return "job-" + uuid.uuid4().hex[:12]


class JobStore:
    """One JSON file per job under ``<root>/.jobs`` (a local folder or an object store)."""

    def __init__(self, model_root: str):
        self._dir = join(model_root, JOBS_DIR)

    def save(self, job: JobRecord) -> None:
        write_bytes(join(self._dir, f"{job.id}.json"), json.dumps(job.to_dict()).encode())

    def load_all(self) -> list[JobRecord]:
        jobs = []
        for name in list_names(self._dir):  # unreachable: raises, since forgetting jobs would forget idempotency keys
            path = join(self._dir, name)
            if name.startswith("."):
                remove_tree(path)  # a local write cut short by a crash
                continue
            if not name.endswith(".json"):
                continue
            try:
                jobs.append(JobRecord.from_dict(json.loads(read_bytes(path))))
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("unreadable job record", extra={"fields": {"path": path, "error": str(exc)}})
        return sorted(jobs, key=lambda j: j.created_at)
