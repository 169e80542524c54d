"""The stop gate on a real server on loopback: once closed, new calls get UNAVAILABLE (retryable, with
a message) while calls already running finish in full, and wait_idle tells when they have."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from movierec_common.graceful_stop import STOPPING_MESSAGE
from movierec_common.grpc_server import build_server

SERVICE = "test.Slow"


@pytest.fixture
def slow_server():
    entered, release = threading.Event(), threading.Event()

    def slow(request: bytes, context) -> bytes:
        entered.set()
        assert release.wait(30), "the test never released the call"
        return request * 1000

    def register(server: grpc.Server) -> None:
        handlers = {"Echo": grpc.unary_unary_rpc_method_handler(slow),
                    "Fast": grpc.unary_unary_rpc_method_handler(lambda request, context: request)}
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])

    handle = build_server("127.0.0.1:0", [SERVICE], register)
    channel = grpc.insecure_channel(f"127.0.0.1:{handle.port}", options=[("grpc.enable_retries", 0)])
    try:
        yield handle, channel, entered, release
    finally:
        release.set()
        channel.close()
        handle.server.stop(None)


def test_a_closed_gate_refuses_new_calls_and_lets_running_ones_finish(slow_server):
    handle, channel, entered, release = slow_server
    echo = channel.unary_unary(f"/{SERVICE}/Echo")
    fast = channel.unary_unary(f"/{SERVICE}/Fast")
    assert fast(b"x", timeout=10) == b"x"
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(echo, b"ab", timeout=30)
        assert entered.wait(30)
        assert handle.gate.in_flight == 1
        handle.gate.close()
        with pytest.raises(grpc.RpcError) as refused:
            fast(b"y", timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert refused.value.details() == STOPPING_MESSAGE
        assert not handle.gate.wait_idle(0.05)  # the running call holds it
        release.set()
        assert running.result(timeout=30) == b"ab" * 1000
    assert handle.gate.wait_idle(10)
    assert handle.gate.in_flight == 0


def test_an_open_gate_counts_nothing_once_calls_return(slow_server):
    handle, channel, _, release = slow_server
    release.set()
    echo = channel.unary_unary(f"/{SERVICE}/Echo")
    assert [echo(b"z", timeout=10) for _ in range(3)] == [b"z" * 1000] * 3
    assert handle.gate.in_flight == 0
    assert handle.gate.wait_idle(0)
