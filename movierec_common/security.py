"""Who may call what: bearer tokens and TLS for both servers.

Tokens come from a file or the environment, never from a flag value, because
flags are visible to every user of the machine in the process list. Tokens are
compared in constant time so that response timing leaks nothing about them.
Health checking and reflection stay open: load balancers and grpcurl need them
and they reveal nothing private.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeAlias

import grpc

# One definition each, shared with the client: a client depends on the contract alone, so they live there.
from clients.credentials import is_loopback as is_loopback
from clients.flags import refuse_token_flags
from movierec_common.logs import event

log = logging.getLogger(__name__)

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")


class SecurityConfigError(ValueError):
    pass


def load_tokens(token_file: str | None) -> list[str]:
    """Tokens from ``token_file`` (one per line, # comments), else $MOVIEREC_TOKENS
    (comma-separated) or $MOVIEREC_TOKEN."""
    if token_file:
        try:
            lines = Path(token_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise SecurityConfigError(f"cannot read token file {token_file}: {exc.strerror}") from exc
        tokens = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        if not tokens:
            raise SecurityConfigError(f"token file {token_file} holds no token")
    else:
        raw = os.environ.get("MOVIEREC_TOKENS") or os.environ.get("MOVIEREC_TOKEN") or ""
        tokens = [t.strip() for t in raw.split(",") if t.strip()]
    short = [t for t in tokens if len(t) < 16]
    if short:
        raise SecurityConfigError("tokens must be at least 16 characters long")
    return tokens


# grpcio's classes are generic only in types-grpcio, so a string.
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def _deny(handler: _Handler, message: str) -> _Handler:
    def abort(_request: object, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    def abort_stream(_request: object, context: grpc.ServicerContext) -> Iterator[None]:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this a generator, as the stream handler must be

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream)
    return grpc.unary_unary_rpc_method_handler(abort)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on the protected methods.

    ``protected`` lists full method names ("/movierec.v1.Trainer/Train"); None
    protects every method except the open services.
    """

    def __init__(self, tokens: Iterable[str], protected: Iterable[str] | None = None):
        self._tokens = [t.encode("utf-8") for t in tokens]
        if not self._tokens:
            raise SecurityConfigError("token authentication needs at least one token")
        self._protected = None if protected is None else frozenset(protected)

    def _requires_token(self, method: str) -> bool:
        if method.startswith(OPEN_SERVICES):
            return False
        return self._protected is None or method in self._protected

    def _valid(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        header = next((value for key, value in metadata or () if key == "authorization"), None)
        if not isinstance(header, str) or not header.startswith("Bearer "):
            return False
        offered = header[len("Bearer "):].strip().encode("utf-8")
        # Compare against every token without short-circuiting.
        matches = [hmac.compare_digest(offered, token) for token in self._tokens]
        return any(matches)

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], _Handler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> _Handler | None:
        handler = continuation(handler_call_details)
        if handler is None or not self._requires_token(handler_call_details.method):
            return handler
        if self._valid(handler_call_details.invocation_metadata):
            return handler
        return _deny(handler, "missing or invalid token: send 'authorization: Bearer <token>' "
                              "(the client reads $MOVIEREC_TOKEN or --token-file)")


class MethodsRefused(grpc.ServerInterceptor):
    """Answers ``methods`` UNAUTHENTICATED with ``message``, whoever calls: writes on a server that has no
    way to tell who may write (no tokens, beyond loopback). Every other method is untouched."""

    def __init__(self, methods: Iterable[str], message: str):
        self._methods = frozenset(methods)
        self._message = message

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], _Handler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> _Handler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method not in self._methods:
            return handler
        return _deny(handler, self._message)


def server_credentials(cert_file: str | None, key_file: str | None,
                       client_ca_file: str | None = None) -> grpc.ServerCredentials | None:
    """TLS credentials, or None for plaintext. A client CA turns on client-certificate verification."""
    if not cert_file and not key_file:
        if client_ca_file:
            raise SecurityConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (cert_file and key_file):
        raise SecurityConfigError("--tls-cert and --tls-key go together")
    try:
        chain = Path(cert_file).read_bytes()
        key = Path(key_file).read_bytes()
        client_ca = Path(client_ca_file).read_bytes() if client_ca_file else None
    except OSError as exc:
        raise SecurityConfigError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from exc
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security")
    group.add_argument("--tls-cert", help="server certificate chain (PEM); enables TLS")
    group.add_argument("--tls-key", help="server private key (PEM)")
    group.add_argument("--tls-client-ca", help="CA (PEM) that client certificates must chain to; enables mutual TLS")
    group.add_argument("--token-file", help="file of accepted bearer tokens, one per line "
                                            "(default: $MOVIEREC_TOKENS or $MOVIEREC_TOKEN)")
    group.add_argument("--allow-plaintext-tokens", action="store_true",
                       help="accept tokens without TLS beyond loopback (they cross the network readable; "
                            "a warning is logged at start)")
    refuse_token_flags(group)


def from_args(args: argparse.Namespace, *, protected: Iterable[str] | None, require_tokens: bool,
              what: str) -> tuple[list[grpc.ServerInterceptor], grpc.ServerCredentials | None]:
    """(interceptors, credentials) for a server; raises SecurityConfigError when
    the configuration would leave ``what`` open where it must not be, or would
    check tokens that reach ``args.host`` beyond loopback in plaintext (unless
    ``--allow-plaintext-tokens``). A server on loopback without tokens checks
    nobody: whoever runs on the machine may call it."""
    credentials = server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca)
    tokens = load_tokens(args.token_file)
    if require_tokens and not tokens:
        raise SecurityConfigError(
            f"{what} needs tokens: put them in a file given by --token-file, or in $MOVIEREC_TOKENS")
    protects_something = protected is None or bool(tuple(protected))
    checks_tokens = bool(tokens) and protects_something
    if checks_tokens and credentials is None and not is_loopback(args.host):
        _plaintext_tokens(args.host, allowed=args.allow_plaintext_tokens)
    interceptors: list[grpc.ServerInterceptor] = [TokenAuthInterceptor(tokens, protected)] if checks_tokens else []
    return interceptors, credentials


def _plaintext_tokens(host: str, *, allowed: bool) -> None:
    """Tokens checked on a plaintext port beyond loopback: anyone on the path reads them off the wire and
    replays them. Refused unless the operator said so, and then said again in the log at every start."""
    if not allowed:
        raise SecurityConfigError(
            f"tokens would cross the network in plaintext on {host}: give --tls-cert and --tls-key, "
            "bind loopback (--host 127.0.0.1), or accept the risk with --allow-plaintext-tokens")
    event(log, "tokens accepted without TLS beyond loopback: anyone on the network path can read and replay "
               "them (--allow-plaintext-tokens)", logging.WARNING, host=host)
