"""Waiting for a recommender to reach a state, by asking it (GetModelStatus), never by sleeping a guess.

One home for the waits the integration and fault tests share: each polls the
replica's own status and fails with what it saw when the state does not come.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from clients import RecommenderClient

POLL_SECONDS = 0.05
T = TypeVar("T")


def until(condition: Callable[[], T], timeout: float, what: str) -> T:
    """Polls ``condition`` until it returns something true and returns that; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g}s"
        time.sleep(POLL_SECONDS)
    return value


def wait_for_version(rc: RecommenderClient, version: int, timeout: float = 60.0) -> float:
    """Waits until the replica behind ``rc`` serves ``version``; returns the seconds it took."""
    started = time.monotonic()
    while (status := rc.model_status()).served_version != version:
        assert time.monotonic() - started < timeout, (
            f"version {version} not served within {timeout}s; the replica serves {status.served_version} "
            f"(pin problem: {status.pin_problem!r}) and knows {[(v.version, v.state) for v in status.versions]}")
        time.sleep(POLL_SECONDS)
    return time.monotonic() - started


def settled_state(rc: RecommenderClient, version: int, timeout: float = 60.0) -> str:
    """Waits until the replica behind ``rc`` has seen ``version`` in the model root and is not loading it;
    returns its state then (SERVING, AVAILABLE, REJECTED, ...). After this, a replica that does not serve
    the version has decided not to, rather than not looked yet or not finished loading."""
    def state() -> str:
        return next((v.state for v in rc.model_status().versions if v.version == version), "")

    until(lambda: state() not in ("", "LOADING"), timeout, f"version {version} never settled in GetModelStatus")
    return state()
