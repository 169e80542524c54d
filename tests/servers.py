"""Starts the real servers as subprocesses on free loopback ports (see
movierec_common.server_process).

Every server started here ends with the test run: it gets SIGTERM when the
pytest process dies, however it dies. One still running when the test module
that started it ends is stopped then and fails that module (see
``tests/conftest.py``), so a fixture that forgets its clean-up is found, and a
failing fixture or a killed run leaves no server, and none of its helpers, behind.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from movierec_common.server_process import ServerProcess as _Launched

# Every server started in this run, held strongly: a leaked server must not drop out of sight when
# the fixture that forgot it is garbage collected.
STARTED: list[ServerProcess] = []


class ServerProcess(_Launched):
    """A server started as ``python -m <module> --port 0 <args>``."""

    def __init__(self, module: str, args: list[str], log_path: Path, env: dict | None = None):
        super().__init__(module, [sys.executable, "-m", module, "--port", "0", *args], log_path, env,
                         end_with_launcher=True)

    def start(self, timeout: float = 120.0) -> ServerProcess:
        # The parent-death signal follows the starting thread: only pytest's main thread outlives the server.
        self.end_with_launcher = threading.current_thread() is threading.main_thread()
        STARTED.append(self)
        return super().start(timeout)


def stop_leftovers(since: int = 0) -> list[str]:
    """Stops every server started here (the ``since``-th onwards) that is still running; returns their names."""
    left = [server for server in STARTED[since:] if server.alive()]
    for server in left:
        server.terminate(timeout=20)
    return [f"{server.name} ({server.log_path})" for server in left]


def start_trainer(model_root: Path, log_dir: Path, *extra: str, env: dict | None = None) -> ServerProcess:
    """A trainer on ``model_root``; its event store is ``log_dir/events.sqlite`` (a recommender started with
    the same ``log_dir`` shares it) unless ``extra`` says where."""
    events = () if "--events" in extra else ("--events", f"sqlite:///{log_dir / 'events.sqlite'}")
    return ServerProcess("trainer_service.server", ["--model-root", str(model_root), *events, *extra],
                         log_dir / "trainer.log", env).start(60)


def start_recommender(model_root: Path, log_dir: Path, *extra: str) -> ServerProcess:
    """A recommender on ``model_root``; its interactions go to ``log_dir/events.sqlite`` unless ``extra``
    says where (tests never use the per-user default store)."""
    events = () if "--events" in extra else ("--events", f"sqlite:///{log_dir / 'events.sqlite'}")
    return ServerProcess("recommender_service.server",
                         ["--model-root", str(model_root), "--poll-seconds", "0.5", *events, *extra],
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


def still_running(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of ``processes`` still alive after up to ``timeout`` seconds (a zombie has exited: only its
    exit status is left for a parent that is gone or has not collected it yet)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for process in processes:
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid}: {' '.join(process.cmdline())[:120]} ({process.memory_info().rss >> 20} MB)"
    except psutil.Error:
        return str(process.pid)


def free_port() -> int:
    """A loopback port free right now, for a flag that takes a port number (``--metrics-port``)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# The sample names a Prometheus family of each type exports (a family with no series yet shows only its type).
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
             "summary": ("_count", "_sum", "_created", ""), "gauge": ("",), "info": ("_info",),
             "stateset": ("",), "gaugehistogram": ("_bucket", "_gcount", "_gsum"), "unknown": ("",)}


class Scrape:
    """One scrape of a server's ``/metrics``, parsed as Prometheus parses it.

    A series the server exports but has not created yet (a labelled counter no
    call has touched) reads 0; a name the server does not export at all, or a
    label its series do not carry, fails the test, so that ``== 0`` cannot pass
    on a misspelt name. ``require`` also fails on a missing series.
    """

    def __init__(self, port: int):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert response.status == 200
            self.text = response.read().decode("utf-8")
        self.samples: dict[tuple[str, frozenset], float] = {}
        self.names: set[str] = set()
        self.exported: dict[str, set[str]] = {}  # sample name -> label names its series carry
        for family in text_string_to_metric_families(self.text):
            self.names.add(family.name)
            for suffix in _SUFFIXES.get(family.type, ("",)):
                self.exported.setdefault(family.name + suffix, set())
            for sample in family.samples:
                self.exported.setdefault(sample.name, set()).update(sample.labels)
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def _check(self, name: str, labels: dict) -> None:
        assert name in self.exported, (
            f"{name} is not exported; close names: {sorted(n for n in self.exported if n[:8] == name[:8])[:20]}")
        carried = self.exported[name]
        unknown = set(labels) - carried
        assert not carried or not unknown, f"{name} has no label(s) {sorted(unknown)}; it has {sorted(carried)}"

    def __call__(self, name: str, **labels) -> float:
        """The one series with exactly these labels (0 when not created yet)."""
        self._check(name, labels)
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def require(self, name: str, **labels) -> float:
        """The one series with exactly these labels, failing when it does not exist."""
        self._check(name, labels)
        key = (name, frozenset(labels.items()))
        assert key in self.samples, (f"no series {name}{labels}; its series: "
                                     f"{[dict(have) for sample, have in self.samples if sample == name][:10]}")
        return self.samples[key]

    def total(self, name: str, **labels) -> float:
        """The sum over every series of ``name`` that has these labels, whatever its others."""
        self._check(name, labels)
        wanted = set(labels.items())
        return sum(value for (sample, have), value in self.samples.items() if sample == name and wanted <= have)
