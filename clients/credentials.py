"""How a client finds its token and builds its channel.

Why this lives apart from the client classes: both clients (and the CLI) must
resolve credentials identically, and the rules are security-relevant, so they
are written down once:

* A token is never required on a command line (it would land in shell history
  and ``ps`` output). In order: the ``token=`` argument, the ``token_file=``
  argument, ``$MOVIEREC_TOKEN``, the file named by ``$MOVIEREC_TOKEN_FILE``.
  Explicit arguments beat the environment so a program can override a
  developer's shell.
* The token travels as ``authorization: Bearer <token>`` call metadata, which
  works on both plaintext and TLS channels (gRPC refuses call *credentials*
  on insecure channels, and loopback test servers are insecure).
* TLS is opt-in (``tls=True`` uses the system roots; ``root_certificates``
  pins a CA); a client certificate and key make it mutual TLS.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import grpc

from movierec_common.security import is_loopback  # noqa: F401 - one definition, shared with the servers

from .errors import ConfigurationError

TOKEN_ENV = "MOVIEREC_TOKEN"
TOKEN_FILE_ENV = "MOVIEREC_TOKEN_FILE"

# Reads (and calls made safe to repeat) are retried on UNAVAILABLE by gRPC
# itself: it knows whether a request already reached the server, honours the
# call's deadline across attempts and adds jittered backoff, which a
# hand-written loop would have to re-implement.
RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def resolve_token(token: str | None = None, token_file: str | os.PathLike | None = None) -> str | None:
    """The bearer token to send, or None for an unauthenticated client."""
    if token:
        return token.strip()
    if token_file:
        return _read_token_file(token_file)
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()
    if os.environ.get(TOKEN_FILE_ENV):
        return _read_token_file(os.environ[TOKEN_FILE_ENV])
    return None


def _read_token_file(path: str | os.PathLike) -> str:
    try:
        token = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigurationError(f"cannot read token file {str(path)!r}: {exc.strerror or exc}") from exc
    if not token:
        raise ConfigurationError(f"token file {str(path)!r} is empty")
    return token


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def channel_credentials(
    *,
    tls: bool = False,
    root_certificates: str | os.PathLike | None = None,
    client_cert: str | os.PathLike | None = None,
    client_key: str | os.PathLike | None = None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials, or None when the channel should be plaintext."""
    if (client_cert is None) != (client_key is None):
        raise ConfigurationError("mutual TLS needs both a client certificate and its key")
    if not (tls or root_certificates or client_cert):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(root_certificates, "CA certificate"),
        private_key=_read_pem(client_key, "client key"),
        certificate_chain=_read_pem(client_cert, "client certificate"),
    )


def _read_pem(path: str | os.PathLike | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from exc


def open_channel(
    target: str,
    *,
    credentials: grpc.ChannelCredentials | None,
    service_config: str,
    options: Sequence[tuple[str, object]] = (),
) -> grpc.Channel:
    """A channel to ``target`` with the given service config (see ``targets.channel_target``)."""
    all_options = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config),
        *options,
    ]
    if credentials is None:
        return grpc.insecure_channel(target, options=all_options)
    return grpc.secure_channel(target, credentials, options=all_options)
