"""Starts the real servers as subprocesses on free loopback ports (see
movierec_common.launch)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from movierec_common.launch import ServerProcess as _Launched


class ServerProcess(_Launched):
    """A server started as ``python -m <module> --port 0 <args>``."""

    def __init__(self, module: str, args: list[str], log_path: Path, env: dict | None = None):
        super().__init__(module, [sys.executable, "-m", module, "--port", "0", *args], log_path, env)


def start_trainer(model_root: Path, log_dir: Path, *extra: str, env: dict | None = None) -> ServerProcess:
    return ServerProcess("trainer_service.server", ["--model-root", str(model_root), *extra],
                         log_dir / "trainer.log", env).start(60)


def start_recommender(model_root: Path, log_dir: Path, *extra: str) -> ServerProcess:
    return ServerProcess("recommender_service.server",
                         ["--model-root", str(model_root), "--poll-seconds", "0.5", *extra],
                         log_dir / "recommender.log").start(60)


def rejection_reason(rc, version: int, timeout: float = 60.0) -> str:
    """Waits until the recommender behind ``rc`` lists ``version`` as REJECTED; returns why."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for info in rc.model_status().versions:
            if info.version == version and info.state == "REJECTED":
                return info.reason
        time.sleep(0.1)
    raise AssertionError(f"version {version} was not rejected within {timeout}s")
