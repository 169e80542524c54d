"""What can go wrong for a caller of the recommender: one exception per
condition, one base class, one table of status codes.

The caller's side of the same statuses is ``clients/errors.py``; this is the
server's. Why raise domain errors instead of aborting where a condition is
found: the code that finds it (a request check, a served version, the
retriever) knows the words a caller can act on, but should not know gRPC, and
the servicer should not know why a movie is missing. Each condition carries
its status code once (``code``, listed in :data:`CONDITIONS`), and
:func:`status` is how the servicer turns any of them into an abort, so the
same condition gets the same status from every call that can meet it.

A version the loader refuses is not a caller's error and is not here: it is
``movierec_common.artifact.ArtifactError``, kept with the version's state and
shown by ``GetModelStatus``.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

__all__ = [
    "RecommenderError",
    "InvalidRequest",
    "DeadlinePassed",
    "NoModelLoaded",
    "SessionsUnsupported",
    "FilterNeedsMetadata",
    "UnknownMovie",
    "EventsOff",
    "InteractionConflict",
    "StoreDown",
    "TooCostly",
    "CallEnded",
    "CONDITIONS",
    "status",
]


class RecommenderError(Exception):
    """A call cannot be answered as asked; ``str(error)`` is the message the caller gets.

    ``code`` is the gRPC status it is answered with; a subclass without its
    own is a bug, answered INTERNAL.
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL


class InvalidRequest(RecommenderError, ValueError):
    """The request breaks a stated limit (empty user id, k out of range, too many movies...).

    The message names the limit and what to send instead.
    """

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlinePassed(RecommenderError):
    """The caller's deadline ran out before the call was handled: no work starts for an answer nobody reads."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED

    def __init__(self, message: str = "the deadline passed before the call was handled") -> None:
        super().__init__(message)


class NoModelLoaded(RecommenderError):
    """No version has been loaded yet (none published, or every one rejected); retrying later helps."""

    code = grpc.StatusCode.UNAVAILABLE  # clients retry it

    def __init__(self, message: str = "no model is loaded yet: publish one with `movierec train`, then retry "
                                      "(GetModelStatus shows rejected versions)") -> None:
        super().__init__(message)


class SessionsUnsupported(RecommenderError):
    """The version has no query encoder (published before sessions existed), so it
    cannot turn movies into a query; retraining publishes one that can.

    ``version`` is the served version when the raiser knows it (the retriever
    does not; the served model adds it).
    """

    code = grpc.StatusCode.FAILED_PRECONDITION  # retrying will not help; retraining does

    def __init__(self, version: int | None = None) -> None:
        self.version = version
        which = "this model version" if version is None else f"model version {version}"
        super().__init__(f"{which} was published before sessions were supported; retrain to answer recent_movie_ids")


class FilterNeedsMetadata(RecommenderError):
    """A genre or year condition sent to a version published before movie metadata existed: it knows
    no genres or years to test, and answering as if none passed (or all did) would mislead. Id
    conditions still work on it; retraining publishes a version that can answer the rest."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, version: int | None = None) -> None:
        self.version = version
        which = "this model version" if version is None else f"model version {version}"
        super().__init__(f"{which} was published before movie metadata (genres, years) existed; retrain to "
                         f"filter by genre or year (exclude_movie_ids and only_movie_ids work on it)")


class UnknownMovie(RecommenderError, LookupError):
    """A movie id the served version does not know (SimilarItems asks about one movie by id)."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, movie_id: int, version: int | None = None) -> None:
        self.movie_id = movie_id
        self.version = version
        which = "this model version" if version is None else f"model version {version}"
        super().__init__(f"movie {movie_id} is not in {which}")


class EventsOff(RecommenderError):
    """Interactions are off on this recommender (``--events none``): nothing can be stored here."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self) -> None:
        super().__init__("interactions are off on this recommender (started with --events none): start it with "
                         "--events sqlite:///PATH or --events postgresql://... to record them")


class InteractionConflict(RecommenderError):
    """An event id already stored with different content: the first write stands, nothing of the batch was
    stored (an identical resend is not this: it stores nothing and succeeds)."""

    code = grpc.StatusCode.ALREADY_EXISTS

    def __init__(self, event_id: str, index: int) -> None:
        self.event_id = event_id
        self.index = index
        super().__init__(f"interactions[{index}].event_id {event_id[:128]!r} was stored before with different "
                         f"content; the first write stands and nothing of this batch was stored: give a new "
                         f"interaction a new id")


class StoreDown(RecommenderError):
    """The event store cannot be written now; nothing of the batch was stored, and a resend with the same
    event ids is safe."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, why: str) -> None:
        super().__init__(f"the event store cannot be written now ({why[:300]}); nothing of this batch was "
                         f"stored: retry with the same event ids")


class TooCostly(RecommenderError):
    """The request keeps every static limit but would cost more than one call may (live scoring work,
    answer bytes); the message gives the figures and how to split the call."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class CallEnded(RecommenderError):
    """The caller cancelled or its deadline passed while a batch was being ranked: the work stopped
    between two users, and nobody reads the status (the servicer answers DEADLINE_EXCEEDED when the
    deadline is why, so the server's metrics say which)."""

    code = grpc.StatusCode.CANCELLED

    def __init__(self, answered: int, total: int) -> None:
        self.answered = answered
        self.total = total
        super().__init__(f"the call ended (cancelled or past its deadline) after {answered} of {total} users; "
                         f"the rest were not ranked")


# Every condition a caller can meet, with its status: the table the README's status table documents.
CONDITIONS: tuple[type[RecommenderError], ...] = (
    InvalidRequest, DeadlinePassed, NoModelLoaded, SessionsUnsupported, FilterNeedsMetadata, UnknownMovie, TooCostly,
    CallEnded, EventsOff, InteractionConflict, StoreDown)


def status(error: RecommenderError) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and details a caller gets for ``error``."""
    return error.code, str(error)
