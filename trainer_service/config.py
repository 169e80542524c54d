"""The trainer's configuration: what ``movierec-trainer``'s flags set, read by the request checks and the jobs."""

from __future__ import annotations

from dataclasses import dataclass

from movierec_common import ann_index
from trainer_service.data_root import MAX_FILE_BYTES


@dataclass(frozen=True)
class TrainerConfig:
    model_root: str
    data_root: str | None = None
    movielens_dir: str | None = None
    queue_size: int = 4
    keep_versions: int = 5
    min_validation_recall_at_10: float = 0.0  # trainer-wide quality floor
    ann_min_items: int = ann_index.MIN_ITEMS  # catalogues this large ship an approximate index
    max_dataset_bytes: int = MAX_FILE_BYTES  # larger dataset files are refused unread
    workers: int = 1  # data-parallel workers a job may use (and uses by default); 1 = in-process, no Ray
    ray_address: str | None = None  # an existing Ray cluster; None = a local Ray started when first needed
    # TensorBoard event files per job: <tensorboard_dir>/<job id>/; None = <model root>/.runs
    tensorboard_dir: str | None = None
