"""The trainer's errors: one class per condition, each carrying the status the Trainer service answers with.

Shaped like ``clients/errors.py``, seen from the other side of the wire.
Every condition a caller (or the job record an operator reads) can act on is
a class under one base, :class:`TrainerError`, and its ``code`` is the
``grpc.StatusCode`` the servicer answers with, decided here once rather than
at each ``except``. The servicer catches ``TrainerError`` and aborts with
``exc.code`` and the message; code that meets a condition raises its class
and never thinks about gRPC.

Conditions met inside a running job (a malformed file, a catalogue a kind
cannot hold, a cancel) are the same classes: the job fails, or ends
CANCELLED, with the message, and no status is sent.

Storage is not the trainer's to classify: ``movierec_common.model_root``
raises ``RootUnreachable`` (``RootAccessDenied`` when the store refused) and
``PinDamaged`` at its boundary. :func:`from_storage` is the one table that
turns them into the trainer's answers, for the two calls that read or write
the root on the caller's behalf (ListVersions, PinVersion, the hidden-movie calls).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import grpc

from movierec_common.hidden_movies import HiddenRulesDamaged
from movierec_common.model_root import PinDamaged, RootAccessDenied, RootUnreachable
from movierec_common.root_lease import RootLeaseLost

__all__ = [
    "TrainerError",
    "InvalidRequest",
    "UnknownModelKind",
    "CatalogueTooLarge",
    "DatasetError",
    "DatasetPathError",
    "MovieLensNotFound",
    "QueueFull",
    "JobNotFound",
    "IdempotencyConflict",
    "VersionNotFound",
    "Cancelled",
    "DistributedTrainingFailed",
    "InteractionsOff",
    "EventStoreUnavailable",
    "StoreUnavailable",
    "StoreRefused",
    "PinUnreadable",
    "HiddenRulesUnreadable",
    "HiddenListFull",
    "RootLost",
    "StorageMessages",
    "from_storage",
]


class TrainerError(Exception):
    """A condition the trainer reports; ``code`` is the status a call that meets it answers with."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN


# --------------------------------------------------------------------------- the request


class InvalidRequest(TrainerError, ValueError):
    """The request cannot be run as given; the message says what to change."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class UnknownModelKind(InvalidRequest):
    """A model kind the trainer does not have; the message lists the ones it has."""


class CatalogueTooLarge(InvalidRequest):
    """A kind that cannot hold the dataset's catalogue (closed form past its bound); names the kinds that can."""


class DatasetError(InvalidRequest):
    """Data that cannot be used; the message names the file, line and problem.

    Found at the Train call (a path, a size, a name) it refuses the request;
    found by the job (a malformed line, an unknown movie) it fails the job.
    """


class DatasetPathError(DatasetError):
    """A path that leaves the data root or does not exist.

    Separate from :class:`DatasetError` so callers can tell a confinement or
    argument problem from bad file content.
    """


class MovieLensNotFound(DatasetError):
    """The MovieLens release asked for is not available locally and cannot be fetched."""


# --------------------------------------------------------------------------- jobs


class QueueFull(TrainerError):
    """The queue holds as many jobs as it may (or the trainer is shutting down); retry after a job finishes."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class TooManyWatchers(TrainerError):
    """Every WatchJob slot is taken (servicer.MAX_WATCHERS); GetJob answers the same question without
    holding a thread."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class JobNotFound(TrainerError, LookupError):
    """No job has this id."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, job_id: str):
        super().__init__(f"no job with id {job_id!r}; `movierec jobs` lists the known ones")
        self.job_id = job_id


class IdempotencyConflict(TrainerError):
    """An idempotency key already used for a different request."""

    code = grpc.StatusCode.ALREADY_EXISTS


class Cancelled(TrainerError):
    """The job was cancelled: raised at the first check after the request (between batches, before a
    publish's last file, between steps), so nothing half-done is kept. The job ends CANCELLED."""

    code = grpc.StatusCode.CANCELLED


class DistributedTrainingFailed(TrainerError, RuntimeError):
    """A Ray run ended without a model; the message says why, for the job's error."""

    code = grpc.StatusCode.INTERNAL


# --------------------------------------------------------------------------- recorded interactions


class InteractionsOff(TrainerError):
    """A request to train on recorded interactions to a trainer started with ``--events none``."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class EventStoreUnavailable(TrainerError):
    """The event store could not be read (down, unreachable, or of a newer schema); the message names it.
    A job that meets it fails with the message; nothing was trained."""

    code = grpc.StatusCode.UNAVAILABLE


# --------------------------------------------------------------------------- versions and the model root


class VersionNotFound(TrainerError, LookupError):
    """The version is not complete in the model root; the message names the ones that are."""

    code = grpc.StatusCode.NOT_FOUND


class StoreUnavailable(TrainerError):
    """The model root could not be read or written just now; retrying later may work."""

    code = grpc.StatusCode.UNAVAILABLE


class StoreRefused(TrainerError):
    """The store refused the trainer (permissions); retrying will not help."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class PinUnreadable(TrainerError):
    """The pin file names no version; pinning or unpinning replaces it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class HiddenRulesUnreadable(TrainerError):
    """The hidden-movie document is not rules, or not signed by the trainer's keys; the trainer will not
    build on it. Removing it and hiding the movies again repairs it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class HiddenListFull(TrainerError):
    """Hiding more would pass the bound on hidden movies (hidden_movies.MAX_HIDDEN_MOVIES)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlinePassed(TrainerError):
    """The caller's deadline ran out before a change was made: nothing is changed for a caller who
    will never learn the outcome (and a retry after DEADLINE_EXCEEDED finds the state it left)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED

    def __init__(self) -> None:
        super().__init__("the deadline passed before the call was handled; nothing was changed")


class RootLost(TrainerError):
    """Another trainer took this trainer's lease on the model root: this one writes nothing more."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class StorageMessages(NamedTuple):
    """What a call says when the store fails it: each is followed by ": " and the store's own words."""

    unreachable: str  # e.g. "the model root cannot be read"
    denied: str       # e.g. "the trainer may not read the model root"


# The store's words are cut here: a botocore message can run to pages.
_STORE_DETAIL_CHARS = 500


StorageError = RootUnreachable | PinDamaged | HiddenRulesDamaged | RootLeaseLost


def from_storage(exc: StorageError, messages: StorageMessages) -> TrainerError:
    """The trainer's answer to a storage failure: the one table from model_root's errors to statuses.

    ``RootAccessDenied`` → FAILED_PRECONDITION, ``RootUnreachable`` →
    UNAVAILABLE, ``PinDamaged`` and ``HiddenRulesDamaged`` → FAILED_PRECONDITION
    (with how to repair them), ``RootLeaseLost`` → FAILED_PRECONDITION.
    """
    if isinstance(exc, PinDamaged):
        return PinUnreadable(f"{exc}; `movierec pin N` or `movierec unpin` replaces it")
    if isinstance(exc, HiddenRulesDamaged):
        return HiddenRulesUnreadable(f"{exc}; remove it from the model root and hide the movies again "
                                     "(recommenders keep the rules they applied meanwhile)")
    if isinstance(exc, RootLeaseLost):
        return RootLost(f"this trainer no longer holds the model root ({exc}); send the call to the trainer "
                        "that does")
    detail = str(exc)[:_STORE_DETAIL_CHARS]
    if isinstance(exc, RootAccessDenied):
        return StoreRefused(f"{messages.denied}: {detail}")
    return StoreUnavailable(f"{messages.unreachable}: {detail}")
