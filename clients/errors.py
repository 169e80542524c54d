"""Exceptions raised by the movierec clients.

Why a hierarchy of our own instead of letting ``grpc.RpcError`` through: an
``RpcError`` is a transport object (its useful parts are *methods* that exist
only on some subclasses), callers would have to import grpc to branch on
status codes, and its message says nothing about which server was called.
Here each status a caller can sensibly react to is a class
(``except NotFound:``), every error keeps the raw ``code`` and ``details``,
and ``str(error)`` names the RPC and the target so a log line or the CLI's
one-line message is enough to act on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

__all__ = [
    "MovieRecError",
    "InvalidArgument",
    "NotFound",
    "Unavailable",
    "ResourceExhausted",
    "Unauthenticated",
    "PermissionDenied",
    "DeadlineExceeded",
    "Cancelled",
    "FailedPrecondition",
    "AlreadyExists",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "DataLoss",
    "ConfigurationError",
    "from_rpc_error",
]


class MovieRecError(Exception):
    """A call to a movierec service failed.

    ``code`` is the ``grpc.StatusCode``, ``details`` the server's own message,
    ``target`` the address called and ``method`` the RPC (e.g. ``"Recommend"``).
    """

    default_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        details: str,
        *,
        code: grpc.StatusCode | None = None,
        target: str | None = None,
        method: str | None = None,
    ) -> None:
        self.code = code if code is not None else self.default_code
        self.details = details
        self.target = target
        self.method = method
        super().__init__(self._message())

    def _message(self) -> str:
        where = " ".join(part for part in (self.method, self.target and f"at {self.target}") if part)
        return f"{where}: {self.details}" if where else self.details

    # Keeps pickling (multiprocessing, pytest-xdist) working.
    def __reduce__(self) -> tuple[Callable[..., MovieRecError], tuple[Any, ...]]:
        return (_rebuild, (type(self), self.details, self.code, self.target, self.method))


def _rebuild(cls: type[MovieRecError], details: str, code: grpc.StatusCode, target: str | None,
             method: str | None) -> MovieRecError:
    return cls(details, code=code, target=target, method=method)


class InvalidArgument(MovieRecError, ValueError):
    """The request was rejected as malformed (bad k, unknown model kind, ...)."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(MovieRecError, LookupError):
    """An unknown job id, or a movie the served model does not know."""

    default_code = grpc.StatusCode.NOT_FOUND


class Unavailable(MovieRecError, ConnectionError):
    """The server is unreachable, or (recommender) has no model loaded yet.

    Idempotent reads were already retried with backoff before this is raised.
    """

    default_code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(MovieRecError):
    """The trainer's queue is full (or another server-side limit was hit)."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(MovieRecError):
    """No token, or the token was not accepted."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(MovieRecError):
    """The token is valid but not allowed to make this call."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class DeadlineExceeded(MovieRecError, TimeoutError):
    """The call's deadline passed, or a ``wait_*`` helper gave up waiting."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(MovieRecError):
    """The call was cancelled (by the client or the server shutting down)."""

    default_code = grpc.StatusCode.CANCELLED


class FailedPrecondition(MovieRecError):
    """The server cannot answer this request in its current state; retrying will not help.

    E.g. ``recent`` movies sent to a model version published before sessions
    existed: a retrained version answers them.
    """

    default_code = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyExists(MovieRecError):
    """An idempotency key was reused with a different training request."""

    default_code = grpc.StatusCode.ALREADY_EXISTS


class Aborted(MovieRecError):
    """The server gave up on the call part-way (e.g. a concurrency conflict); it may be retried."""

    default_code = grpc.StatusCode.ABORTED


class OutOfRange(MovieRecError):
    default_code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(MovieRecError):
    """The server does not offer this call: it runs an older movierec than this client (upgrade it)."""

    default_code = grpc.StatusCode.UNIMPLEMENTED


class Internal(MovieRecError):
    """The server failed in a way it did not expect; its log has the details."""

    default_code = grpc.StatusCode.INTERNAL


class DataLoss(MovieRecError):
    default_code = grpc.StatusCode.DATA_LOSS


class ConfigurationError(MovieRecError, ValueError):
    """The client itself is mis-configured (unreadable token file, cert without key...).

    Raised before anything is sent, so there is no server status; ``code`` is
    ``INVALID_ARGUMENT`` because the caller's input is what needs fixing.
    """

    default_code = grpc.StatusCode.INVALID_ARGUMENT


_BY_CODE: dict[grpc.StatusCode, type[MovieRecError]] = {
    cls.default_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        Unavailable,
        ResourceExhausted,
        Unauthenticated,
        PermissionDenied,
        DeadlineExceeded,
        Cancelled,
        FailedPrecondition,
        AlreadyExists,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        DataLoss,
    )
}


def from_rpc_error(error: grpc.RpcError, *, target: str | None, method: str | None) -> MovieRecError:
    """Translate a ``grpc.RpcError`` into the matching ``MovieRecError`` subclass."""
    code = _call_attr(error, "code") or grpc.StatusCode.UNKNOWN
    details = _call_attr(error, "details") or code.name.replace("_", " ").lower()
    cls = _BY_CODE.get(code, MovieRecError)
    return cls(details, code=code, target=target, method=method)


def _call_attr(error: grpc.RpcError, name: str) -> Any:
    # Not every RpcError is also a grpc.Call (e.g. some channel-level failures).
    getter = getattr(error, name, None)
    try:
        return getter() if callable(getter) else None
    except Exception:  # a half-initialised call object must not hide the real error
        return None
