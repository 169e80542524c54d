import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DatasetSpec(_message.Message):
    __slots__ = ("ratings_path", "items_path", "name", "interactions")
    RATINGS_PATH_FIELD_NUMBER: _ClassVar[int]
    ITEMS_PATH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    ratings_path: str
    items_path: str
    name: str
    interactions: InteractionsSpec
    def __init__(self, ratings_path: _Optional[str] = ..., items_path: _Optional[str] = ..., name: _Optional[str] = ..., interactions: _Optional[_Union[InteractionsSpec, _Mapping]] = ...) -> None: ...

class InteractionsSpec(_message.Message):
    __slots__ = ("include", "up_to")
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    UP_TO_FIELD_NUMBER: _ClassVar[int]
    include: bool
    up_to: int
    def __init__(self, include: _Optional[bool] = ..., up_to: _Optional[int] = ...) -> None: ...

class Hyperparameters(_message.Message):
    __slots__ = ("embedding_dim", "batch_size", "learning_rate", "dropout_rate", "num_negatives", "weight_decay", "temperature", "patience", "validation_size", "hidden_dim", "l2_lambda", "blend_weight")
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_RATE_FIELD_NUMBER: _ClassVar[int]
    NUM_NEGATIVES_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_SIZE_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_DIM_FIELD_NUMBER: _ClassVar[int]
    L2_LAMBDA_FIELD_NUMBER: _ClassVar[int]
    BLEND_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    embedding_dim: int
    batch_size: int
    learning_rate: float
    dropout_rate: float
    num_negatives: int
    weight_decay: float
    temperature: float
    patience: int
    validation_size: int
    hidden_dim: int
    l2_lambda: float
    blend_weight: float
    def __init__(self, embedding_dim: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., dropout_rate: _Optional[float] = ..., num_negatives: _Optional[int] = ..., weight_decay: _Optional[float] = ..., temperature: _Optional[float] = ..., patience: _Optional[int] = ..., validation_size: _Optional[int] = ..., hidden_dim: _Optional[int] = ..., l2_lambda: _Optional[float] = ..., blend_weight: _Optional[float] = ...) -> None: ...

class EvaluationSpec(_message.Message):
    __slots__ = ("holdout", "holdout_size", "refit")
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    REFIT_FIELD_NUMBER: _ClassVar[int]
    holdout: str
    holdout_size: int
    refit: bool
    def __init__(self, holdout: _Optional[str] = ..., holdout_size: _Optional[int] = ..., refit: _Optional[bool] = ...) -> None: ...

class QualityGate(_message.Message):
    __slots__ = ("min_validation_recall_at_10", "require_no_regression", "disabled", "require_beating_baseline")
    MIN_VALIDATION_RECALL_AT_10_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_NO_REGRESSION_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_BEATING_BASELINE_FIELD_NUMBER: _ClassVar[int]
    min_validation_recall_at_10: float
    require_no_regression: bool
    disabled: bool
    require_beating_baseline: bool
    def __init__(self, min_validation_recall_at_10: _Optional[float] = ..., require_no_regression: _Optional[bool] = ..., disabled: _Optional[bool] = ..., require_beating_baseline: _Optional[bool] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("model", "dataset", "epochs", "hyperparameters", "evaluation", "seed", "idempotency_key", "quality_gate", "workers")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    QUALITY_GATE_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    model: str
    dataset: DatasetSpec
    epochs: int
    hyperparameters: Hyperparameters
    evaluation: EvaluationSpec
    seed: int
    idempotency_key: str
    quality_gate: QualityGate
    workers: int
    def __init__(self, model: _Optional[str] = ..., dataset: _Optional[_Union[DatasetSpec, _Mapping]] = ..., epochs: _Optional[int] = ..., hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., evaluation: _Optional[_Union[EvaluationSpec, _Mapping]] = ..., seed: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., quality_gate: _Optional[_Union[QualityGate, _Mapping]] = ..., workers: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("phase", "epoch", "total_epochs", "step", "steps_per_epoch", "loss", "elapsed_seconds", "validation")
    class ValidationEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PHASE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FIELD_NUMBER: _ClassVar[int]
    phase: str
    epoch: int
    total_epochs: int
    step: int
    steps_per_epoch: int
    loss: float
    elapsed_seconds: float
    validation: _containers.ScalarMap[str, float]
    def __init__(self, phase: _Optional[str] = ..., epoch: _Optional[int] = ..., total_epochs: _Optional[int] = ..., step: _Optional[int] = ..., steps_per_epoch: _Optional[int] = ..., loss: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ..., validation: _Optional[_Mapping[str, float]] = ...) -> None: ...

class TrainJob(_message.Message):
    __slots__ = ("id", "state", "request", "progress", "loss_history", "metrics", "baseline_metrics", "evaluation_split", "model_version", "published", "not_published_reason", "error", "created_at", "started_at", "finished_at", "trigger", "interactions_watermark")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[TrainJob.State]
        QUEUED: _ClassVar[TrainJob.State]
        RUNNING: _ClassVar[TrainJob.State]
        SUCCEEDED: _ClassVar[TrainJob.State]
        FAILED: _ClassVar[TrainJob.State]
        CANCELLED: _ClassVar[TrainJob.State]
    STATE_UNSPECIFIED: TrainJob.State
    QUEUED: TrainJob.State
    RUNNING: TrainJob.State
    SUCCEEDED: TrainJob.State
    FAILED: TrainJob.State
    CANCELLED: TrainJob.State
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class BaselineMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LOSS_HISTORY_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_METRICS_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_SPLIT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    NOT_PUBLISHED_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    INTERACTIONS_WATERMARK_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: TrainJob.State
    request: TrainRequest
    progress: Progress
    loss_history: _containers.RepeatedScalarFieldContainer[float]
    metrics: _containers.ScalarMap[str, float]
    baseline_metrics: _containers.ScalarMap[str, float]
    evaluation_split: str
    model_version: int
    published: bool
    not_published_reason: str
    error: str
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    trigger: str
    interactions_watermark: int
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[TrainJob.State, str]] = ..., request: _Optional[_Union[TrainRequest, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., loss_history: _Optional[_Iterable[float]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., baseline_metrics: _Optional[_Mapping[str, float]] = ..., evaluation_split: _Optional[str] = ..., model_version: _Optional[int] = ..., published: _Optional[bool] = ..., not_published_reason: _Optional[str] = ..., error: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trigger: _Optional[str] = ..., interactions_watermark: _Optional[int] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[TrainJob]
    def __init__(self, jobs: _Optional[_Iterable[_Union[TrainJob, _Mapping]]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VersionInfo(_message.Message):
    __slots__ = ("version", "model_kind", "metrics", "created_at", "size_bytes", "pinned", "served_by", "online_judged", "online_hit_rate", "online_hits", "interactions")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_KIND_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    ONLINE_JUDGED_FIELD_NUMBER: _ClassVar[int]
    ONLINE_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    ONLINE_HITS_FIELD_NUMBER: _ClassVar[int]
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    version: int
    model_kind: str
    metrics: _containers.ScalarMap[str, float]
    created_at: _timestamp_pb2.Timestamp
    size_bytes: int
    pinned: bool
    served_by: _containers.RepeatedScalarFieldContainer[str]
    online_judged: int
    online_hit_rate: float
    online_hits: int
    interactions: InteractionsUsed
    def __init__(self, version: _Optional[int] = ..., model_kind: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., size_bytes: _Optional[int] = ..., pinned: _Optional[bool] = ..., served_by: _Optional[_Iterable[str]] = ..., online_judged: _Optional[int] = ..., online_hit_rate: _Optional[float] = ..., online_hits: _Optional[int] = ..., interactions: _Optional[_Union[InteractionsUsed, _Mapping]] = ...) -> None: ...

class InteractionsUsed(_message.Message):
    __slots__ = ("store_id", "store", "watermark", "read", "used", "replaced", "unknown_movies", "new_users")
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_MOVIES_FIELD_NUMBER: _ClassVar[int]
    NEW_USERS_FIELD_NUMBER: _ClassVar[int]
    store_id: str
    store: str
    watermark: int
    read: int
    used: int
    replaced: int
    unknown_movies: int
    new_users: int
    def __init__(self, store_id: _Optional[str] = ..., store: _Optional[str] = ..., watermark: _Optional[int] = ..., read: _Optional[int] = ..., used: _Optional[int] = ..., replaced: _Optional[int] = ..., unknown_movies: _Optional[int] = ..., new_users: _Optional[int] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions", "pinned_version", "online_problem")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PINNED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ONLINE_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[VersionInfo]
    pinned_version: int
    online_problem: str
    def __init__(self, versions: _Optional[_Iterable[_Union[VersionInfo, _Mapping]]] = ..., pinned_version: _Optional[int] = ..., online_problem: _Optional[str] = ...) -> None: ...

class PinVersionRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class PinVersionResponse(_message.Message):
    __slots__ = ("pinned_version", "previous_pinned_version")
    PINNED_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_PINNED_VERSION_FIELD_NUMBER: _ClassVar[int]
    pinned_version: int
    previous_pinned_version: int
    def __init__(self, pinned_version: _Optional[int] = ..., previous_pinned_version: _Optional[int] = ...) -> None: ...

class HideMoviesRequest(_message.Message):
    __slots__ = ("movie_ids",)
    MOVIE_IDS_FIELD_NUMBER: _ClassVar[int]
    movie_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, movie_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class UnhideMoviesRequest(_message.Message):
    __slots__ = ("movie_ids",)
    MOVIE_IDS_FIELD_NUMBER: _ClassVar[int]
    movie_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, movie_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ListHiddenMoviesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HiddenMovies(_message.Message):
    __slots__ = ("movie_ids", "sequence")
    MOVIE_IDS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    movie_ids: _containers.RepeatedScalarFieldContainer[int]
    sequence: int
    def __init__(self, movie_ids: _Optional[_Iterable[int]] = ..., sequence: _Optional[int] = ...) -> None: ...
