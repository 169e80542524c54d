"""The trainer's configuration: what ``movierec-trainer``'s flags set, read by the request checks and the jobs."""

from __future__ import annotations

from dataclasses import dataclass

from movierec_common import ann_index
from movierec_common.event_store import EventStore
from movierec_common.signing import PublishingKeys
from trainer_service.data_root import MAX_FILE_BYTES


@dataclass(frozen=True)
class TrainerConfig:
    model_root: str
    data_root: str | None = None
    movielens_dir: str | None = None
    queue_size: int = 4
    keep_versions: int = 5  # the newest this many valid versions are kept (publisher.apply_retention); 0 = all
    # Staging (a .tmp-* folder, an object-store version without metadata.json) untouched this long is removed.
    stale_staging_seconds: float = 900.0
    min_validation_recall_at_10: float = 0.0  # trainer-wide quality floor
    ann_min_items: int = ann_index.MIN_ITEMS  # catalogues this large ship an approximate index
    max_dataset_bytes: int = MAX_FILE_BYTES  # larger dataset files are refused unread
    workers: int = 1  # data-parallel workers a job may use (and uses by default); 1 = in-process, no Ray
    ray_address: str | None = None  # an existing Ray cluster; None = a local Ray started when first needed
    # TensorBoard event files per job: <tensorboard_dir>/<job id>/; None = <model root>/.runs
    tensorboard_dir: str | None = None
    # --publish-key-file: versions and pins are signed with its first key; None = nothing signed
    publish_keys: PublishingKeys | None = None
    # --events: the event store a job reads recorded interactions from (interactions_data) and ListVersions
    # reads online outcomes from; opened lazily (connects on first use). None = --events none: off.
    events: EventStore | None = None
