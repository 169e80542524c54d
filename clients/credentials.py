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

import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

import grpc

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


def is_loopback(address: str) -> bool:
    """Whether ``address`` reaches this machine only; the one test the client and both servers use
    (they take it from here, through ``movierec_common.security``).

    A server asks it of the host it binds (a trainer beyond loopback needs
    tokens), a client of each backend it calls (a token in plaintext beyond
    loopback is warned about). So it takes a bare host (``127.0.0.1``,
    ``::1``, ``localhost``), ``host:port``, ``[v6]:port`` or a gRPC target
    (``dns:///localhost:50051``, ``ipv4:127.0.0.1:1,127.0.0.1:2``, ``unix:path``).
    An empty host or ``0.0.0.0`` means every interface, and a name other
    than ``localhost`` may resolve anywhere: neither is loopback.
    """
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    if address.startswith("dns:"):  # dns:host:port, dns:///host:port, dns://authority/host:port
        address = address.removeprefix("dns:")
        if address.startswith("//"):
            address = address[2:].partition("/")[2]
    elif address.startswith(("ipv4:", "ipv6:")):  # one or more addresses: all must be loopback
        return all(is_loopback(part) for part in address[5:].split(","))
    host = address
    if host.startswith("["):  # [::1] or [::1]:port
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:  # host:port (a bare IPv6 address has more colons)
        host = host.partition(":")[0]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(token: str | None = None, token_file: str | os.PathLike[str] | None = None) -> str | None:
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


def _read_token_file(path: str | os.PathLike[str]) -> str:
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
    root_certificates: str | os.PathLike[str] | None = None,
    client_cert: str | os.PathLike[str] | None = None,
    client_key: str | os.PathLike[str] | None = None,
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


def _read_pem(path: str | os.PathLike[str] | None, what: str) -> bytes | None:
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
