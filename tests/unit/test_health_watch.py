"""``wait_until_serving`` follows the health service's Watch stream, against real in-process gRPC servers.

An interceptor records which health methods were called, so each test shows
how the client waited, not only that it returned.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from clients import DeadlineExceeded, RecommenderClient, Unauthenticated

SERVICE = "movierec.v1.Recommender"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Calls(grpc.ServerInterceptor):
    def __init__(self):
        self.methods: list[str] = []
        self.first_call = threading.Event()

    def intercept_service(self, continuation, handler_call_details):
        self.methods.append(handler_call_details.method.rsplit("/", 1)[-1])
        self.first_call.set()
        return continuation(handler_call_details)


class CheckOnly(health_pb2_grpc.HealthServicer):
    """An older health service: Check only (Watch answers UNIMPLEMENTED); SERVING from the third Check."""

    def __init__(self):
        self.checks = 0

    def Check(self, request, context):
        self.checks += 1
        return health_pb2.HealthCheckResponse(status=SERVING if self.checks >= 3 else NOT_SERVING)


def serve(servicer, port: int = 0):
    calls = Calls()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[calls])
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, f"127.0.0.1:{port}", calls


def test_returns_the_moment_the_watched_status_turns_serving():
    servicer = health.HealthServicer(experimental_non_blocking=True)  # as the real servers
    server, address, calls = serve(servicer)
    serving_set_at: list[float] = []

    def turn_serving_once_watched():
        # One thread sets both statuses, in order: two timers could fire in either order on a
        # stalled machine and leave NOT_SERVING last (CI saw exactly that once).
        assert calls.first_call.wait(20), "the client never opened its Watch stream"
        servicer.set(SERVICE, NOT_SERVING)
        time.sleep(0.2)  # spacing only: the stream has an update that is not SERVING to read past
        serving_set_at.append(time.monotonic())
        servicer.set(SERVICE, SERVING)

    announcer = threading.Thread(target=turn_serving_once_watched)
    try:
        # Not registered yet (SERVICE_UNKNOWN), then NOT_SERVING, then SERVING: all on one stream.
        announcer.start()
        with RecommenderClient(address, timeout=5) as client:
            started = time.monotonic()
            client.wait_until_serving(timeout=20, poll_interval=30)  # a poller would sleep 30 s after the first look
            returned_at = time.monotonic()
    finally:
        announcer.join()
        server.stop(0)
    assert serving_set_at and serving_set_at[0] <= returned_at  # it waited for SERVING
    assert returned_at - started < 5  # and did not wait for a second look 30 s later
    assert calls.methods == ["Watch"]


def test_a_timeout_names_the_last_status_the_stream_delivered():
    servicer = health.HealthServicer(experimental_non_blocking=True)
    servicer.set(SERVICE, NOT_SERVING)
    server, address, calls = serve(servicer)
    try:
        with RecommenderClient(address, timeout=5) as client:
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded, match=r"not serving after 0.5s \(last: NOT_SERVING\)"):
                client.wait_until_serving(timeout=0.5, poll_interval=0.05)
            assert time.monotonic() - started < 2
    finally:
        server.stop(0)
    assert set(calls.methods) == {"Watch"}


def test_a_server_without_watch_is_polled_with_check():
    servicer = CheckOnly()
    server, address, calls = serve(servicer)
    try:
        with RecommenderClient(address, timeout=5) as client:
            client.wait_until_serving(timeout=10, poll_interval=0.05)
    finally:
        server.stop(0)
    assert calls.methods == ["Watch", "Check", "Check", "Check"]


def test_waits_for_a_server_that_is_not_up_yet():
    with socket.socket() as probe:  # a free port, for a server that starts later
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    servicer = health.HealthServicer(experimental_non_blocking=True)
    servicer.set(SERVICE, SERVING)
    started_server = []
    timer = threading.Timer(0.5, lambda: started_server.append(serve(servicer, port)))
    with RecommenderClient(f"127.0.0.1:{port}", timeout=5) as client:
        timer.start()
        started = time.monotonic()
        try:
            client.wait_until_serving(timeout=20, poll_interval=0.1)
            took = time.monotonic() - started
        finally:
            timer.join()
            for server, *_ in started_server:
                server.stop(0)
    assert 0.45 < took < 10  # gRPC's reconnect backoff (1 s, growing) decides the exact moment
    assert started_server[0][2].methods[-1] == "Watch"


def test_a_refusal_that_waiting_cannot_fix_is_raised_at_once():
    class Refusing(grpc.ServerInterceptor):
        def intercept_service(self, continuation, handler_call_details):
            def refuse(request, context):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing token")

            return grpc.unary_stream_rpc_method_handler(refuse)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[Refusing()])
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with RecommenderClient(f"127.0.0.1:{port}", timeout=5) as client:
            started = time.monotonic()
            with pytest.raises(Unauthenticated, match="missing token"):
                client.wait_until_serving(timeout=20)
            assert time.monotonic() - started < 5
    finally:
        server.stop(0)
