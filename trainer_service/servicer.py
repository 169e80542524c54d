"""The Trainer gRPC servicer: translates protos to domain calls and domain
errors to status codes, nothing more."""

from __future__ import annotations

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from movierec.v1 import trainer_pb2, trainer_pb2_grpc
from trainer_service.job_manager import IdempotencyConflict, JobManager, JobNotFound, QueueFull
from trainer_service.jobs import JobRecord, TrainSpec
from trainer_service.pipeline import InvalidRequest, TrainerConfig, resolve_workers, validate_spec
from trainer_service.publisher import PinDamaged, PublishedVersion, VersionNotFound, pin_version, root_versions

MAX_KEY_LENGTH = 128
MAX_NAME_LENGTH = 64
MAX_PATH_LENGTH = 1024
# gRPC carries the status message percent-encoded (up to 3 bytes per UTF-8
# byte) in an 8 KiB header block; a longer message would turn the caller's
# INVALID_ARGUMENT into a transport error.
MAX_MESSAGE_BYTES = 1200


def _invalid(context, exc: Exception) -> None:
    raw = str(exc).encode("utf-8")
    text = raw.decode("utf-8") if len(raw) <= MAX_MESSAGE_BYTES else (
        raw[:MAX_MESSAGE_BYTES].decode("utf-8", errors="ignore") + "…")
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, text)
MAX_LIST_LIMIT = 1000


def spec_from_proto(request: trainer_pb2.TrainRequest) -> TrainSpec:
    if len(request.idempotency_key) > MAX_KEY_LENGTH:
        raise InvalidRequest(f"idempotency_key is longer than {MAX_KEY_LENGTH} characters")
    for name in ("ratings_path", "items_path"):
        if len(getattr(request.dataset, name)) > MAX_PATH_LENGTH:
            raise InvalidRequest(f"dataset.{name} is longer than {MAX_PATH_LENGTH} characters")
    if len(request.dataset.name) > MAX_NAME_LENGTH:
        raise InvalidRequest(f"dataset.name is longer than {MAX_NAME_LENGTH} characters")
    if not request.model:
        raise InvalidRequest("model is required, e.g. 'two_tower'")
    for name, value in (("model", request.model), ("evaluation.holdout", request.evaluation.holdout)):
        if len(value) > MAX_NAME_LENGTH:
            raise InvalidRequest(f"{name} is longer than {MAX_NAME_LENGTH} characters")
    overrides = {field.name: value for field, value in request.hyperparameters.ListFields()}
    gate = request.quality_gate
    return TrainSpec(
        model=request.model,
        ratings_path=request.dataset.ratings_path,
        items_path=request.dataset.items_path,
        dataset_name=request.dataset.name,
        epochs=request.epochs,
        hyperparameters=overrides,
        holdout=request.evaluation.holdout or "random",
        holdout_size=request.evaluation.holdout_size or 10,
        refit=request.evaluation.refit if request.evaluation.HasField("refit") else True,
        seed=request.seed,
        idempotency_key=request.idempotency_key,
        min_validation_recall_at_10=gate.min_validation_recall_at_10,
        require_no_regression=gate.require_no_regression,
        quality_gate_disabled=gate.disabled,
        workers=request.workers,
    )


def spec_to_proto(spec: TrainSpec) -> trainer_pb2.TrainRequest:
    return trainer_pb2.TrainRequest(
        model=spec.model,
        dataset=trainer_pb2.DatasetSpec(ratings_path=spec.ratings_path, items_path=spec.items_path,
                                        name=spec.dataset_name),
        epochs=spec.epochs,
        hyperparameters=trainer_pb2.Hyperparameters(**spec.hyperparameters),
        evaluation=trainer_pb2.EvaluationSpec(holdout=spec.holdout, holdout_size=spec.holdout_size,
                                              refit=spec.refit),
        seed=spec.seed,
        idempotency_key=spec.idempotency_key,
        quality_gate=trainer_pb2.QualityGate(
            min_validation_recall_at_10=spec.min_validation_recall_at_10,
            require_no_regression=spec.require_no_regression,
            disabled=spec.quality_gate_disabled,
        ),
        workers=spec.workers,
    )


def _timestamp(seconds: float) -> Timestamp | None:
    if not seconds:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def job_to_proto(job: JobRecord) -> trainer_pb2.TrainJob:
    return trainer_pb2.TrainJob(
        id=job.id,
        state=trainer_pb2.TrainJob.State.Value(job.state),
        request=spec_to_proto(job.spec),
        progress=trainer_pb2.Progress(
            phase=job.phase, epoch=job.epoch, total_epochs=job.total_epochs, step=job.step,
            steps_per_epoch=job.steps_per_epoch, loss=job.loss, elapsed_seconds=job.elapsed_seconds,
            validation=job.validation,
        ),
        loss_history=job.loss_history,
        metrics=job.metrics,
        baseline_metrics=job.baseline_metrics,
        evaluation_split=job.evaluation_split,
        model_version=job.model_version,
        published=job.published,
        not_published_reason=job.not_published_reason,
        error=job.error,
        created_at=_timestamp(job.created_at),
        started_at=_timestamp(job.started_at),
        finished_at=_timestamp(job.finished_at),
    )


def version_to_proto(version: PublishedVersion) -> trainer_pb2.VersionInfo:
    return trainer_pb2.VersionInfo(
        version=version.version, model_kind=version.model_kind, metrics=version.metrics,
        created_at=_timestamp(version.created_at or 0.0), size_bytes=version.size_bytes, pinned=version.pinned,
        served_by=version.served_by,
    )


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, manager: JobManager, config: TrainerConfig):
        self._manager = manager
        self._config = config

    def Train(self, request, context):
        try:
            spec = spec_from_proto(request)
            validate_spec(spec, self._config)
            resolve_workers(spec.workers, self._config)  # refuses more than --workers now, not when it runs
            return job_to_proto(self._manager.submit(spec))
        except InvalidRequest as exc:
            _invalid(context, exc)
        except QueueFull as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except IdempotencyConflict as exc:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))

    def GetJob(self, request, context):
        return job_to_proto(self._job(request.job_id, context, lambda: self._manager.get(request.job_id)))

    def ListJobs(self, request, context):
        if not 0 <= request.limit <= MAX_LIST_LIMIT:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"limit must be between 0 and {MAX_LIST_LIMIT}")
        jobs = self._manager.list(request.limit or 50)
        return trainer_pb2.ListJobsResponse(jobs=[job_to_proto(j) for j in jobs])

    def WatchJob(self, request, context):
        self._job(request.job_id, context, lambda: self._manager.get(request.job_id))
        for job in self._manager.watch(request.job_id, is_active=context.is_active):
            yield job_to_proto(job)

    def CancelJob(self, request, context):
        return job_to_proto(self._job(request.job_id, context, lambda: self._manager.cancel(request.job_id)))

    def ListVersions(self, request, context):
        try:
            listing = root_versions(self._config.model_root)
        except PinDamaged as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"{exc}; `movierec pin N` or `movierec unpin` replaces it")
        except Exception as exc:  # an unreachable store, a permission error
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the model root cannot be read: {str(exc)[:500]}")
        return trainer_pb2.ListVersionsResponse(versions=[version_to_proto(v) for v in listing.versions],
                                                pinned_version=listing.pinned_version or 0)

    def PinVersion(self, request, context):
        if request.version < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"version must be a published version number, or 0 to unpin; got {request.version}")
        try:
            previous = pin_version(self._config.model_root, request.version or None)
        except VersionNotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except PermissionError as exc:  # retrying will not help
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"the trainer may not write the pin into the model root: {str(exc)[:500]}")
        except Exception as exc:  # an unreachable store
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"the pin could not be written to the model root: {str(exc)[:500]}")
        return trainer_pb2.PinVersionResponse(pinned_version=request.version, previous_pinned_version=previous or 0)

    @staticmethod
    def _job(job_id: str, context, call):
        if not job_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "job_id is required")
        if len(job_id) > MAX_KEY_LENGTH:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"job_id is longer than {MAX_KEY_LENGTH} characters")
        try:
            return call()
        except JobNotFound:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job with id {job_id!r}; `movierec jobs` lists the known ones")
