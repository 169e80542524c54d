"""Starts the real servers as subprocesses on free loopback ports.

Each server prints ``... listening on HOST:PORT`` once it accepts calls; we
start it with ``--port 0`` and read the port it chose, so parallel runs never
collide.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

LISTENING = re.compile(r"listening on ([\w.\-\[\]:]+):(\d+)")


class ServerProcess:
    def __init__(self, module: str, args: list[str], log_path: Path, env: dict | None = None):
        self.module = module
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "ServerProcess":
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, "--port", "0", *self.args],
            stdout=subprocess.PIPE, stderr=self.log, env=self.env,
        )
        found: list[int] = []

        def read_stdout():
            for raw in self.process.stdout:
                line = raw.decode("utf-8", "replace")
                self.log.write(raw)
                self.log.flush()
                match = LISTENING.search(line)
                if match and not found:
                    found.append(int(match.group(2)))

        threading.Thread(target=read_stdout, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.process.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.module} did not start within {timeout}s; see {self.log_path}")
            time.sleep(0.05)
        self.port = found[0]
        return self

    def terminate(self, timeout: float = 30.0) -> int:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode if self.process else 0

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def start_trainer(model_root: Path, log_dir: Path, *extra: str, env: dict | None = None) -> ServerProcess:
    return ServerProcess("trainer_service.server", ["--model-root", str(model_root), *extra],
                         log_dir / "trainer.log", env).start()


def start_recommender(model_root: Path, log_dir: Path, *extra: str) -> ServerProcess:
    return ServerProcess("recommender_service.server",
                         ["--model-root", str(model_root), "--poll-seconds", "0.5", *extra],
                         log_dir / "recommender.log").start()
