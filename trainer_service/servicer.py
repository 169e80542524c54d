"""The Trainer gRPC servicer: translates protos to domain calls and domain errors to status codes, nothing more.

Every refusal is a ``TrainerError`` carrying its status (``errors``); the
request's rules live in ``train_request``, the storage failures' statuses in
``errors.from_storage``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import NoReturn

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from movierec.v1 import trainer_pb2, trainer_pb2_grpc
from movierec_common import hidden_movies
from movierec_common.artifact import InteractionsRecord
from movierec_common.event_store import OnlineOutcome
from movierec_common.hidden_movies import HiddenRules, HiddenRulesDamaged
from movierec_common.model_root import PinDamaged, RootUnreachable
from movierec_common.root_lease import RootLeaseLost
from trainer_service import errors
from trainer_service.config import TrainerConfig
from trainer_service.errors import InvalidRequest, StorageMessages, TooManyWatchers, TrainerError
from trainer_service.job_manager import JobManager
from trainer_service.jobs import JobRecord
from trainer_service.online_figures import online_outcomes
from trainer_service.publisher import PublishedVersion, pin_version, root_versions
from trainer_service.train_request import MAX_KEY_LENGTH, resolve_workers, spec_from_proto, spec_to_proto, validate_spec

# gRPC carries the status message percent-encoded (up to 3 bytes per UTF-8
# byte) in an 8 KiB header block; a longer message would turn the caller's
# INVALID_ARGUMENT into a transport error.
MAX_MESSAGE_BYTES = 1200
MAX_LIST_LIMIT = 1000
# A WatchJob stream holds one of the server's request threads (16: grpc_server.build_server's default) for
# as long as its job runs, and job ids are public through ListJobs. So at most this many at once: the other
# threads always answer Train, CancelJob, PinVersion and the short reads (measured before the cap: 300
# watchers made a token holder's Train fail RESOURCE_EXHAUSTED at once).
MAX_WATCHERS = 8

_LISTING = StorageMessages(unreachable="the model root cannot be read",
                           denied="the trainer may not read the model root")
_PINNING = StorageMessages(unreachable="the pin could not be written to the model root",
                           denied="the trainer may not write the pin into the model root")
_HIDING = StorageMessages(unreachable="the hidden movies could not be changed in the model root (nothing changed)",
                          denied="the trainer may not change the hidden movies in the model root")
_LISTING_HIDDEN = StorageMessages(unreachable="the hidden movies cannot be read from the model root",
                                  denied="the trainer may not read the hidden movies in the model root")


def _fitted(message: str) -> str:
    """``message`` cut to what a status header carries."""
    raw = message.encode("utf-8")
    return raw.decode("utf-8") if len(raw) <= MAX_MESSAGE_BYTES else (
        raw[:MAX_MESSAGE_BYTES].decode("utf-8", errors="ignore") + "…")


def _abort(context: grpc.ServicerContext, error: TrainerError) -> NoReturn:
    context.abort(error.code, _fitted(str(error)))
    raise AssertionError("context.abort returns only by raising")  # pragma: no cover


@contextlib.contextmanager
def _answering(context: grpc.ServicerContext, storage: StorageMessages | None = None) -> Iterator[None]:
    """Ends the call with the status of the ``TrainerError`` raised inside; with ``storage``, a store failure
    too (``errors.from_storage``). Anything else is a bug, and reaches gRPC as UNKNOWN."""
    try:
        yield
    except TrainerError as exc:
        _abort(context, exc)
    except (RootUnreachable, PinDamaged, HiddenRulesDamaged, RootLeaseLost) as exc:
        if storage is None:
            raise
        _abort(context, errors.from_storage(exc, storage))


def _before_deadline(context: grpc.ServicerContext) -> None:
    """Raises DeadlinePassed when the caller's deadline has already run out: a change (a pin, hidden
    movies) is not made for a caller who has stopped waiting and cannot know whether it was. Checked on
    entry and again under the writer's lock just before the write; a write already under way when the
    deadline passes still lands (as with any RPC, DEADLINE_EXCEEDED then means "maybe")."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise errors.DeadlinePassed()


def _timestamp(seconds: float) -> Timestamp | None:
    if not seconds:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def job_to_proto(job: JobRecord) -> trainer_pb2.TrainJob:
    return trainer_pb2.TrainJob(
        id=job.id,
        state=job.state,  # the enum's name
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
        trigger=job.trigger,
        interactions_watermark=job.interactions_watermark,
    )


def interactions_to_proto(record: InteractionsRecord | None) -> trainer_pb2.InteractionsUsed | None:
    if record is None:
        return None
    return trainer_pb2.InteractionsUsed(
        store_id=record.store_id, store=record.store, watermark=record.watermark, read=record.read, used=record.used,
        replaced=record.replaced, unknown_movies=record.unknown_movies, new_users=record.new_users)


def version_to_proto(version: PublishedVersion, online: OnlineOutcome | None = None) -> trainer_pb2.VersionInfo:
    online = online or OnlineOutcome()
    return trainer_pb2.VersionInfo(
        version=version.version, model_kind=version.model_kind, metrics=version.metrics,
        created_at=_timestamp(version.created_at or 0.0), size_bytes=version.size_bytes, pinned=version.pinned,
        served_by=version.served_by, online_judged=online.judged, online_hits=online.hits,
        online_hit_rate=online.hit_rate, interactions=interactions_to_proto(version.interactions),
    )


def hidden_to_proto(rules: HiddenRules) -> trainer_pb2.HiddenMovies:
    return trainer_pb2.HiddenMovies(movie_ids=rules.movie_ids.tolist(), sequence=rules.sequence)


def _changed_hidden(change: Callable[[], HiddenRules]) -> trainer_pb2.HiddenMovies:
    """The hidden movies after ``change``, its refusals as the trainer's errors (storage: see _answering)."""
    try:
        return hidden_to_proto(change())
    except hidden_movies.HiddenRequestInvalid as exc:
        raise InvalidRequest(str(exc)) from None
    except hidden_movies.HiddenListFull as exc:
        raise errors.HiddenListFull(str(exc)) from None


def _job_id(job_id: str) -> str:
    if not job_id:
        raise InvalidRequest("job_id is required")
    if len(job_id) > MAX_KEY_LENGTH:
        raise InvalidRequest(f"job_id is longer than {MAX_KEY_LENGTH} characters")
    return job_id


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, manager: JobManager, config: TrainerConfig):
        self._manager = manager
        self._config = config
        self._watchers = threading.BoundedSemaphore(MAX_WATCHERS)

    def Train(self, request: trainer_pb2.TrainRequest, context: grpc.ServicerContext) -> trainer_pb2.TrainJob:
        with _answering(context):
            spec = spec_from_proto(request)
            validate_spec(spec, self._config)
            resolve_workers(spec.workers, self._config)  # refuses more than --workers now, not when it runs
            return job_to_proto(self._manager.submit(spec))

    def GetJob(self, request: trainer_pb2.GetJobRequest, context: grpc.ServicerContext) -> trainer_pb2.TrainJob:
        with _answering(context):
            return job_to_proto(self._manager.get(_job_id(request.job_id)))

    def ListJobs(self, request: trainer_pb2.ListJobsRequest,
                 context: grpc.ServicerContext) -> trainer_pb2.ListJobsResponse:
        with _answering(context):
            if not 0 <= request.limit <= MAX_LIST_LIMIT:
                raise InvalidRequest(f"limit must be between 0 and {MAX_LIST_LIMIT}")
            jobs = self._manager.list(request.limit or 50)
            return trainer_pb2.ListJobsResponse(jobs=[job_to_proto(j) for j in jobs])

    def WatchJob(self, request: trainer_pb2.GetJobRequest,
                 context: grpc.ServicerContext) -> Iterator[trainer_pb2.TrainJob]:
        with _answering(context):
            self._manager.get(_job_id(request.job_id))
            if not self._watchers.acquire(blocking=False):
                raise TooManyWatchers(f"the trainer serves at most {MAX_WATCHERS} WatchJob streams at once and "
                                      "all are taken; poll GetJob instead, or retry when a watcher ends")
        try:
            for job in self._manager.watch(request.job_id, is_active=context.is_active):
                yield job_to_proto(job)
        finally:
            self._watchers.release()

    def CancelJob(self, request: trainer_pb2.CancelJobRequest, context: grpc.ServicerContext) -> trainer_pb2.TrainJob:
        with _answering(context):
            return job_to_proto(self._manager.cancel(_job_id(request.job_id)))

    def ListVersions(self, request: trainer_pb2.ListVersionsRequest,
                     context: grpc.ServicerContext) -> trainer_pb2.ListVersionsResponse:
        with _answering(context, storage=_LISTING):
            listing = root_versions(self._config.model_root)
            online, problem = online_outcomes(self._config.events)  # one query; never fails the listing
            return trainer_pb2.ListVersionsResponse(
                versions=[version_to_proto(v, online.get(v.version)) for v in listing.versions],
                pinned_version=listing.pinned_version or 0, online_problem=problem)

    def PinVersion(self, request: trainer_pb2.PinVersionRequest,
                   context: grpc.ServicerContext) -> trainer_pb2.PinVersionResponse:
        with _answering(context, storage=_PINNING):
            _before_deadline(context)
            if request.version < 0:
                raise InvalidRequest(f"version must be a published version number, or 0 to unpin; "
                                     f"got {request.version}")
            previous = pin_version(self._config.model_root, request.version or None, self._config.publish_keys,
                                   before_write=lambda: _before_deadline(context))
            return trainer_pb2.PinVersionResponse(pinned_version=request.version,
                                                  previous_pinned_version=previous or 0)

    def HideMovies(self, request: trainer_pb2.HideMoviesRequest,
                   context: grpc.ServicerContext) -> trainer_pb2.HiddenMovies:
        config = self._config
        with _answering(context, storage=_HIDING):
            _before_deadline(context)
            return _changed_hidden(lambda: hidden_movies.hide(config.model_root, request.movie_ids,
                                                              config.publish_keys, lambda: _before_deadline(context)))

    def UnhideMovies(self, request: trainer_pb2.UnhideMoviesRequest,
                     context: grpc.ServicerContext) -> trainer_pb2.HiddenMovies:
        config = self._config
        with _answering(context, storage=_HIDING):
            _before_deadline(context)
            return _changed_hidden(lambda: hidden_movies.unhide(
                config.model_root, request.movie_ids, config.publish_keys, lambda: _before_deadline(context)))

    def ListHiddenMovies(self, request: trainer_pb2.ListHiddenMoviesRequest,
                         context: grpc.ServicerContext) -> trainer_pb2.HiddenMovies:
        with _answering(context, storage=_LISTING_HIDDEN):
            return hidden_to_proto(hidden_movies.read_rules(self._config.model_root, self._config.publish_keys))
