"""``TrainerClient`` and ``RecommenderClient``: the movierec services as Python calls.

Why a hand-written layer over the generated stubs: the stubs speak protobuf
and raise ``grpc.RpcError``; callers want domain calls (``recommend("42")``),
typed results, exceptions they can catch by meaning, and sane transport
defaults they do not have to know about:

* every unary call has a deadline (the constructor's ``timeout``, overridable
  per call), so a hung server never hangs the caller;
* idempotent calls are retried on UNAVAILABLE by gRPC's own retry machinery
  (see ``credentials.RETRY_POLICY``). ``train`` is made idempotent by always
  sending an idempotency key (a random one unless the caller gives one): a
  retried attempt carries the same key, so it cannot queue a second job;
* the recommender client takes several replicas and lets gRPC balance them
  round robin over the healthy ones, retrying on another (``clients.targets``);
* a token (argument, token file or environment) is attached to every call;
* long waits (``wait_for_job``, ``wait_until_serving``) survive a broken
  stream or a restarting server instead of surfacing the first hiccup.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import time
import uuid
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any, Self, TypeVar, Unpack

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from movierec.v1 import recommender_pb2, recommender_pb2_grpc, trainer_pb2, trainer_pb2_grpc

from . import credentials as creds
from . import types as t
from . import wire
from .errors import ConfigurationError, DeadlineExceeded, MovieRecError, from_rpc_error
from .targets import channel_target

__all__ = ["TrainerClient", "RecommenderClient", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 10.0  # seconds, for each unary call
# The largest answer the client accepts, as much as a movierec server sends
# (movierec_common.grpc_server.MAX_SEND_BYTES). gRPC's default of 4 MB is too
# little: a RecommendBatch of 100,000 items weighs 4.5 MB with 30-byte titles,
# and the recommender caps it at 32 MB (MAX_BATCH_ANSWER_BYTES).
MAX_RECEIVE_BYTES = 64 * 1024 * 1024

_T = TypeVar("_T")
PathLike = str | os.PathLike[str]

# A broken watch stream or a failed check is worth another try on these codes;
# anything else (NOT_FOUND, UNAUTHENTICATED, ...) will not get better by waiting.
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)


# wait_until_serving keeps waiting on these: the server is not up yet, is
# restarting, does not know the service yet (Check), or the stream was cut.
_NOT_YET = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)

_SERVING = health_pb2.HealthCheckResponse.SERVING


class _Client:
    """Channel, credentials, deadlines and error translation shared by both clients."""

    SERVICE: str  # full gRPC service name, also the health-check service name
    DEFAULT_TARGET: str
    _STUB: Callable[[grpc.Channel], Any]  # the generated stub class of SERVICE (protoc writes no types for it)
    _RETRIED: tuple[str, ...]  # methods safe to retry on UNAVAILABLE
    _BALANCED = False  # may take several addresses (see targets.channel_target)

    def __init__(
        self,
        target: str | Sequence[str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        token: str | None = None,
        token_file: PathLike | None = None,
        tls: bool = False,
        root_certificates: PathLike | None = None,
        client_cert: PathLike | None = None,
        client_key: PathLike | None = None,
        channel: grpc.Channel | None = None,
        options: Sequence[tuple[str, object]] = (),
    ) -> None:
        if target is not None and not isinstance(target, str):
            target = ",".join(str(part) for part in target)
        self.target = target or ("<channel>" if channel is not None else self.DEFAULT_TARGET)
        self.timeout = timeout
        token = creds.resolve_token(token, token_file)
        self._metadata = creds.auth_metadata(token)
        self._owns_channel = channel is None
        self.balanced = False
        if channel is None:
            plan = channel_target(self.target, service=self.SERVICE, retried=self._RETRIED, balance=self._BALANCED)
            self.balanced = plan.balanced
            channel_creds = creds.channel_credentials(
                tls=tls, root_certificates=root_certificates, client_cert=client_cert, client_key=client_key
            )
            if token and channel_creds is None and not all(creds.is_loopback(a) for a in plan.addresses):
                warnings.warn(
                    f"sending a bearer token to {self.target} over a plaintext channel; use tls=True",
                    stacklevel=3,
                )
            names = {name for name, _ in options}
            if "grpc.max_receive_message_length" not in names:
                options = [("grpc.max_receive_message_length", MAX_RECEIVE_BYTES), *options]
            if plan.authority and not names & {"grpc.default_authority", "grpc.ssl_target_name_override"}:
                options = [("grpc.default_authority", plan.authority), *options]
            channel = creds.open_channel(
                plan.target, credentials=channel_creds, service_config=plan.service_config, options=options
            )
        self._channel = channel
        self._health = health_pb2_grpc.HealthStub(channel)
        self._stub = self._STUB(channel)

    # -- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        """Close the channel (a channel passed in by the caller is left open)."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r})"

    # -- calls -------------------------------------------------------------

    def _call(self, method: str, rpc: Callable[..., _T], request: Message, timeout: float | None) -> _T:
        """One unary call with deadline and token; RpcError becomes MovieRecError."""
        try:
            return rpc(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, target=self.target, method=method) from exc

    def _deadline(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    def wait_until_serving(self, timeout: float = 60.0, *, poll_interval: float = 0.5) -> None:
        """Block until the server's health service reports this service SERVING.

        Follows the standard ``grpc.health.v1.Health/Watch`` stream, so it
        returns the moment the server turns SERVING instead of at the next
        poll. A server that is not up yet, restarts or ends the stream counts
        as "not yet": the stream is opened again ``poll_interval`` seconds
        later, until the deadline. A server without ``Watch``
        (UNIMPLEMENTED) is asked with ``Check`` every ``poll_interval``
        instead. With several replicas, returns once any of them serves.
        Raises ``DeadlineExceeded`` after ``timeout`` seconds, naming the last
        status seen.
        """
        deadline = time.monotonic() + timeout
        request = health_pb2.HealthCheckRequest(service=self.SERVICE)
        last = "no answer"
        watch = True
        while True:
            remaining = deadline - time.monotonic()
            method = "Health/Watch" if watch else "Health/Check"
            try:
                if watch:
                    with contextlib.closing(self._health_statuses(request, remaining)) as statuses:
                        for status in statuses:
                            if status == _SERVING:
                                return
                            last = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
                else:
                    check_timeout = max(0.01, min(self.timeout, remaining))
                    status = self._health.Check(request, timeout=check_timeout, metadata=self._metadata).status
                    if status == _SERVING:
                        return
                    last = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, target=self.target, method=method)
                if watch and error.code == grpc.StatusCode.UNIMPLEMENTED:
                    watch = False  # an older health service: poll with Check
                    continue
                if error.code not in _NOT_YET:
                    raise error from exc
                if error.code != grpc.StatusCode.DEADLINE_EXCEEDED or last == "no answer":
                    last = f"{error.code.name}: {error.details}"  # the deadline itself says less than a status seen
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(
                    f"{self.SERVICE} not serving after {timeout:g}s (last: {last})",
                    target=self.target,
                    method="wait_until_serving",
                )
            time.sleep(min(poll_interval, remaining))

    def _health_statuses(self, request: health_pb2.HealthCheckRequest,
                         remaining: float) -> Generator[int, None, None]:
        """The statuses one Watch stream delivers until it ends or the deadline passes."""
        call = self._health.Watch(request, timeout=max(0.01, remaining), metadata=self._metadata)
        try:
            for response in call:
                yield response.status
        finally:
            call.cancel()  # no-op when the stream ended; frees the stream when the caller stops at SERVING


class RecommenderClient(_Client):
    """Top-k movies, similar movies and model status from a Recommender service.

    >>> with RecommenderClient("localhost:50052") as rc:
    ...     for item in rc.recommend("42", k=10):
    ...         print(item.title, item.score)

    Replicas: pass several addresses (``"h1:50052,h2:50052"`` or a list) or a
    DNS name with a record per replica (``"dns:///recommenders:50052"``), and
    calls go round robin to the replicas whose health check says SERVING;
    one that is down or still has no model is skipped, and a call it failed
    with UNAVAILABLE is retried on another (see ``clients.targets``). Every
    answer still names the model version that produced it. ``model_status``
    and ``wait_until_serving`` then speak for whichever healthy replica
    answers; give one replica's address to ask that replica.
    """

    SERVICE = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name
    DEFAULT_TARGET = "localhost:50052"
    _BALANCED = True
    # RecordInteractions too: the event ids make a resend store nothing twice.
    _RETRIED = ("Recommend", "RecommendBatch", "SimilarItems", "GetModelStatus", "RecordInteractions")
    _STUB = recommender_pb2_grpc.RecommenderStub

    def recommend(
        self,
        user_id: str | int,
        k: int = 10,
        *,
        exclude_seen: bool | None = None,
        recent: Iterable[int] | None = None,
        filter: t.Filter | None = None,
        timeout: float | None = None,
    ) -> t.Recommendations:
        """The top ``k`` movies for a user; an unknown user gets the popularity list
        (``cold_start=True``). ``exclude_seen=None`` leaves the server default (True).

        ``recent``: movie ids the user just interacted with, oldest first (at
        most 1,000). They count as the newest part of a known user's history,
        and as the whole history of an unknown one, whose answer is then
        personal (``cold_start=False``); with ``exclude_seen`` they are left
        out of the answer. Ids the model does not know come back in
        ``unknown_movie_ids``. A model version published before sessions
        existed raises ``FailedPrecondition``.

        ``filter``: a :class:`clients.Filter`; only movies passing it are
        answered, chosen inside retrieval, so the answer holds exactly ``k``
        whenever ``k`` pass (``eligible_movies`` says how many did). Its ids
        the version does not know come back in ``unknown_movie_ids`` too. An
        unknown genre name, a list over its limit or an inverted year range
        raise ``InvalidArgument``; a genre or year condition sent to a version
        without movie metadata raises ``FailedPrecondition`` (retrain).
        """
        request = wire.recommend_request(user_id, k, exclude_seen=exclude_seen, recent=recent, filter=filter)
        response = self._call("Recommend", self._stub.Recommend, request, timeout)
        return wire.recommendations_from_proto(response)

    def recommend_batch(
        self,
        user_ids: Iterable[str | int],
        k: int = 10,
        *,
        exclude_seen: bool | None = None,
        filter: t.Filter | None = None,
        timeout: float | None = None,
    ) -> t.BatchRecommendations:
        """Recommendations for many users, all from the same model version; ``filter`` (as for
        ``recommend``) applies to every user, each result says how many movies passed for that user."""
        request = wire.batch_request(user_ids, k, exclude_seen=exclude_seen, filter=filter)
        response = self._call("RecommendBatch", self._stub.RecommendBatch, request, timeout)
        return wire.batch_from_proto(response)

    def record(self, interactions: t.Interaction | Iterable[t.Interaction], *,
               timeout: float | None = None) -> t.Recorded:
        """Stores what users did (at most 1,000 interactions a call), durably: it returns once the batch is
        committed. All or nothing: ``InvalidArgument`` names a bad interaction's index, ``AlreadyExists``
        an event id stored before with different content (nothing of the batch is stored either way);
        ``FailedPrecondition`` when the recommender records nothing (``--events none``). A resend with the
        same event ids (``Recorded.event_ids``) is always safe: unchanged ones count as ``duplicates``.
        """
        batch = [interactions] if isinstance(interactions, t.Interaction) else interactions
        request = wire.record_request(batch)
        response = self._call("RecordInteractions", self._stub.RecordInteractions, request, timeout)
        return wire.recorded_from_proto(request, response)

    def similar_items(
        self, movie_id: int, k: int = 10, *, filter: t.Filter | None = None, timeout: float | None = None
    ) -> t.SimilarItems:
        """The ``k`` movies nearest to ``movie_id``, drawn from those passing ``filter`` (as for
        ``recommend``); ``NotFound`` if the model does not know ``movie_id``."""
        request = wire.similar_request(movie_id, k, filter=filter)
        response = self._call("SimilarItems", self._stub.SimilarItems, request, timeout)
        return wire.similar_from_proto(response)

    def model_status(self, *, timeout: float | None = None) -> t.ModelStatus:
        """What is served, and every model version the service has seen."""
        request = recommender_pb2.GetModelStatusRequest()
        response = self._call("GetModelStatus", self._stub.GetModelStatus, request, timeout)
        return wire.model_status_from_proto(response)


class TrainerClient(_Client):
    """Queue, follow and cancel training jobs on a Trainer service.

    >>> with TrainerClient("localhost:50051") as tc:
    ...     job = tc.train("two_tower", epochs=5)
    ...     final = tc.wait_for_job(job.id)
    """

    SERVICE = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name
    DEFAULT_TARGET = "localhost:50051"
    # Train is safe to retry because every request carries an idempotency key;
    # a pin sent twice leaves the same pin, movies hidden (or unhidden) twice the same list.
    _RETRIED = ("Train", "GetJob", "ListJobs", "WatchJob", "CancelJob", "ListVersions", "PinVersion",
                "HideMovies", "UnhideMovies", "ListHiddenMovies")

    #: consecutive failed reconnects before ``watch_job``/``wait_for_job`` give up
    max_reconnects = 8
    #: seconds between GetJob polls when the server has no WatchJob
    poll_interval = 1.0

    _STUB = trainer_pb2_grpc.TrainerStub

    def train(self, model: str, *, timeout: float | None = None, **options: Unpack[t.TrainOptions]) -> t.Job:
        """Queue a training job and return it at once (state ``QUEUED``).

        ``options`` are those of :class:`clients.types.TrainOptions`
        (``epochs=``, ``holdout=``, ``hyperparameters=``, ``refit=``, ...);
        one left out or ``None`` is the trainer's default. ``dataset`` names a
        MovieLens release instead of files (``"movielens/1m-ratings"``,
        ``"movielens/25m-ratings"``, ...; the trainer lists them when the name
        is unknown). ``hyperparameters`` takes the names in
        ``clients.types.HYPERPARAMETERS``. Without an
        ``idempotency_key`` a random one is sent, so gRPC's retries are safe;
        pass your own to make retries across program runs safe too.
        ``workers`` asks for that many data-parallel workers (at most the
        trainer's ``--workers``; ``None`` takes the trainer's own number).
        ``refit=False`` publishes the evaluated model itself instead of one
        trained again on all the data (``None``: the trainer's default, a refit).
        ``interactions=True`` adds the interactions recorded in the trainer's event
        store to the data, up to store position ``interactions_up_to`` (``None``:
        the latest when the job starts; the job's ``interactions_watermark`` says
        which it used); ``FailedPrecondition`` from a trainer run with ``--events none``.
        """
        request = wire.train_request(model, **options)
        if not request.idempotency_key:
            request.idempotency_key = uuid.uuid4().hex
        return wire.job_from_proto(self._call("Train", self._stub.Train, request, timeout))

    def get_job(self, job_id: str, *, timeout: float | None = None) -> t.Job:
        request = trainer_pb2.GetJobRequest(job_id=job_id)
        return wire.job_from_proto(self._call("GetJob", self._stub.GetJob, request, timeout))

    def list_jobs(self, limit: int = 50, *, timeout: float | None = None) -> list[t.Job]:
        """The newest ``limit`` jobs, newest first."""
        request = trainer_pb2.ListJobsRequest(limit=limit)
        response = self._call("ListJobs", self._stub.ListJobs, request, timeout)
        return [wire.job_from_proto(job) for job in response.jobs]

    def cancel_job(self, job_id: str, *, timeout: float | None = None) -> t.Job:
        """Cancel a queued or running job; a finished job is returned unchanged."""
        request = trainer_pb2.CancelJobRequest(job_id=job_id)
        return wire.job_from_proto(self._call("CancelJob", self._stub.CancelJob, request, timeout))

    def list_versions(self, *, timeout: float | None = None) -> t.Versions:
        """Every complete version in the model root, newest first, with the pin and the replicas serving each."""
        response = self._call("ListVersions", self._stub.ListVersions, trainer_pb2.ListVersionsRequest(), timeout)
        return wire.versions_from_proto(response)

    def pin_version(self, version: int, *, timeout: float | None = None) -> t.Pin:
        """Hold every recommender on ``version`` (a rollback) until ``unpin()``; needs a token when tokens are on.

        The pin is kept in the model root: each recommender follows it within
        one poll (``model_status().pin_problem`` says why one could not), and
        it survives restarts. ``NotFound`` for a version that is not complete
        in the model root.
        """
        if isinstance(version, bool) or not isinstance(version, numbers.Integral):
            raise ConfigurationError(f"version must be a version number, got {version!r}")
        if version == 0:
            raise ConfigurationError("version 0 is not a version; call unpin() to follow the newest version again")
        return self._pin(int(version), timeout)

    def unpin(self, *, timeout: float | None = None) -> t.Pin:
        """Let every recommender follow the newest valid version again."""
        return self._pin(0, timeout)

    def _pin(self, version: int, timeout: float | None) -> t.Pin:
        request = trainer_pb2.PinVersionRequest(version=version)
        return wire.pin_from_proto(self._call("PinVersion", self._stub.PinVersion, request, timeout))

    def hide_movies(self, movie_ids: Iterable[int], *, timeout: float | None = None) -> t.HiddenMovies:
        """Leave these movies out of every answer of every recommender (a licence ended, a takedown);
        needs a token when tokens are on. Returns the whole hidden list after the change.

        The list is kept in the model root beside the pin: each recommender
        applies it on its next poll (``model_status().hidden_sequence`` reaches
        the returned ``sequence``), whatever version it serves, and it survives
        restarts and new versions. ``InvalidArgument`` for no ids or more than
        10,000 in one call.
        """
        request = wire.hide_request(movie_ids)
        return wire.hidden_from_proto(self._call("HideMovies", self._stub.HideMovies, request, timeout))

    def unhide_movies(self, movie_ids: Iterable[int], *, timeout: float | None = None) -> t.HiddenMovies:
        """Take movies off the hidden list (ids not on it are ignored); returns the list after the change."""
        request = wire.unhide_request(movie_ids)
        return wire.hidden_from_proto(self._call("UnhideMovies", self._stub.UnhideMovies, request, timeout))

    def hidden_movies(self, *, timeout: float | None = None) -> t.HiddenMovies:
        """The hidden movies as the model root holds them (a read: no token needed unless reads are protected)."""
        request = trainer_pb2.ListHiddenMoviesRequest()
        return wire.hidden_from_proto(self._call("ListHiddenMovies", self._stub.ListHiddenMovies, request, timeout))

    def watch_job(self, job_id: str, *, timeout: float | None = None, reconnect: bool = True) -> Iterator[t.Job]:
        """Yield the job on every change until it ends; the last item is the final state.

        No overall deadline unless ``timeout`` is given (then ``DeadlineExceeded``).
        With ``reconnect`` a broken stream is re-opened (checking GetJob in
        between); a server without WatchJob is polled instead.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._follow(job_id, deadline, timeout, reconnect)

    def wait_for_job(self, job_id: str, *, timeout: float | None = 600.0) -> t.Job:
        """Block until the job ends and return its final state."""
        last = None
        for job in self.watch_job(job_id, timeout=timeout):
            last = job
        assert last is not None and last.done
        return last

    # -- following a job ----------------------------------------------------

    def _follow(
        self, job_id: str, deadline: float | None, timeout: float | None, reconnect: bool
    ) -> Iterator[t.Job]:
        # mode "stream": WatchJob; "check": one GetJob after the stream broke or
        # ended early, then back to "stream"; "poll": the server has no WatchJob.
        last: t.Job | None = None
        failures = 0
        mode = "stream"
        while True:
            try:
                if mode == "stream":
                    source = self._watch_once(job_id, deadline)
                else:
                    source = self._get_once(job_id, deadline)
                with contextlib.closing(source):
                    for job in source:
                        failures = 0
                        if job != last:  # a reconnect repeats the current state
                            yield job
                        last = job
                        if job.done:
                            return
            except MovieRecError as exc:
                if self._expired(deadline):
                    raise self._timeout(job_id, timeout, last) from exc
                if mode == "stream" and exc.code == grpc.StatusCode.UNIMPLEMENTED:
                    mode = "poll"
                    continue
                if not reconnect or exc.code not in _TRANSIENT or failures >= self.max_reconnects:
                    raise
                failures += 1
            if mode == "stream":
                mode = "check"  # find out at once whether the job ended meanwhile
                continue
            if mode == "check":
                mode = "stream"
            pause = self.poll_interval if mode == "poll" and not failures else self._backoff(max(1, failures))
            self._sleep(pause, deadline)
            if self._expired(deadline):
                raise self._timeout(job_id, timeout, last)

    def _watch_once(self, job_id: str, deadline: float | None) -> Generator[t.Job, None, None]:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        call = self._stub.WatchJob(
            trainer_pb2.GetJobRequest(job_id=job_id), timeout=remaining, metadata=self._metadata
        )
        try:
            for message in call:
                yield wire.job_from_proto(message)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, target=self.target, method="WatchJob") from exc
        finally:
            call.cancel()  # no-op when finished; frees the stream if the caller stopped early

    def _get_once(self, job_id: str, deadline: float | None) -> Generator[t.Job, None, None]:
        yield self.get_job(job_id, timeout=self._bounded(deadline))

    def _bounded(self, deadline: float | None) -> float:
        if deadline is None:
            return self.timeout
        return max(0.0, min(self.timeout, deadline - time.monotonic()))

    @staticmethod
    def _expired(deadline: float | None) -> bool:
        # a little slack: gRPC's own deadline may fire a hair before our clock agrees
        return deadline is not None and time.monotonic() >= deadline - 0.01

    @staticmethod
    def _backoff(failures: int) -> float:
        return min(5.0, 0.2 * 2.0 ** (failures - 1))

    @staticmethod
    def _sleep(delay: float, deadline: float | None) -> None:
        if deadline is not None:
            delay = min(delay, max(0.0, deadline - time.monotonic()))
        if delay > 0:
            time.sleep(delay)

    def _timeout(self, job_id: str, timeout: float | None, last: t.Job | None) -> DeadlineExceeded:
        state = last.state if last else "unknown"
        return DeadlineExceeded(
            f"job {job_id} did not finish within {timeout:g}s (last state {state})",
            target=self.target,
            method="WatchJob",
        )

