"""A movierec server as a child process, for tests, benchmarks and scripts: start it and learn its port.

Servers started with ``--port 0`` bind any free port and print
``... listening on HOST:PORT`` on stdout once they accept calls; tests,
benchmarks and scripts read that line instead of guessing free ports, so
parallel runs never collide.

Test support: the services never import this module (a unit test checks it).
What a server itself needs so that nothing it starts outlives it is in
:mod:`movierec_common.launch`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

LISTENING = re.compile(r"listening on ([\w.\-\[\]:]+):(\d+)")


class ServerProcess:
    """A server as a child process.

    ``end_with_launcher``: the server gets SIGTERM (a graceful stop) when the
    process that started it dies, even by SIGKILL, so a test run that is
    killed or whose fixture fails leaves no server behind. The signal comes
    when the launching *thread* ends (PR_SET_PDEATHSIG), so use it from a
    thread that outlives the server, such as pytest's main thread. Linux
    only; elsewhere the option does nothing (see
    :mod:`movierec_common.end_with_launcher`).
    """

    def __init__(self, name: str, command: list[str], log_path: Path, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, end_with_launcher: bool = False):
        self.name = name
        self.command = command
        self.end_with_launcher = end_with_launcher
        self.log_path = Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    target = address

    def start(self, timeout: float = 120.0) -> ServerProcess:
        log = open(self.log_path, "ab")
        command = self.command
        if self.end_with_launcher:
            command = [sys.executable, "-m", "movierec_common.end_with_launcher", str(os.getpid()), *command]
        process = self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=self.env,
                                                  cwd=self.cwd)
        found: list[int] = []

        def read_stdout(stdout: IO[bytes]) -> None:
            for raw in stdout:
                log.write(raw)
                log.flush()
                match = LISTENING.search(raw.decode("utf-8", "replace"))
                if match and not found:
                    found.append(int(match.group(2)))

        assert process.stdout is not None  # stdout=PIPE
        threading.Thread(target=read_stdout, args=(process.stdout,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found:
            if process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {process.returncode}; see {self.log_path}")
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
