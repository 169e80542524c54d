"""Starting a movierec server as a child process and learning its port.

Servers started with ``--port 0`` bind any free port and print
``... listening on HOST:PORT`` on stdout once they accept calls; tests,
benchmarks and scripts read that line instead of guessing free ports, so
parallel runs never collide.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

LISTENING = re.compile(r"listening on ([\w.\-\[\]:]+):(\d+)")


class ServerProcess:
    def __init__(self, name: str, command: list[str], log_path: Path, env: dict | None = None,
                 cwd: Path | None = None):
        self.name = name
        self.command = command
        self.log_path = Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    target = address

    def start(self, timeout: float = 120.0) -> "ServerProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=log, env=self.env, cwd=self.cwd)
        found: list[int] = []

        def read_stdout():
            for raw in self.process.stdout:
                log.write(raw)
                log.flush()
                match = LISTENING.search(raw.decode("utf-8", "replace"))
                if match and not found:
                    found.append(int(match.group(2)))

        threading.Thread(target=read_stdout, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.name} did not start within {timeout}s; see {self.log_path}")
            time.sleep(0.05)
        self.port = found[0]
        return self

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within timeout; returns the exit code."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode if self.process else 0

    stop = terminate

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 60) -> str:
        """The end of the server's log, for a failure message."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(no log at {self.log_path}: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None
