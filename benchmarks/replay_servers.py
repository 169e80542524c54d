"""The replay benchmark's servers for one model kind: a trainer and one recommender per setting, on one model root.

* the trainer: ``--data-root`` (the base half), the retrain setting's event store, and
  ``--retrain-after-interactions N``; until the retrain setting sends anything its store is empty, so the
  policy queues nothing and every recommender serves the base version;
* ``frozen``: a recommender with ``--events none`` (no fresh histories; nothing is sent to it anyway);
* ``fresh``: a recommender on an event store of its own, which the trainer does not read (no retraining);
* ``retrain``: a recommender on the trainer's event store.

All start side by side, each from a thread of its own that waits until the end: ``end_with_launcher``
gives a server SIGTERM when the thread that started it ends (or this process dies, however it dies), so
a killed benchmark leaves no server behind. Every server gets the same bearer token, so a token in the
caller's environment cannot make the writes fail (``RecordInteractions`` and ``Train`` need one whenever
tokens are configured).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from movierec_common.server_process import ServerProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "replay-benchmark-token-0123456789abcdef"
POLL_SECONDS = 0.5  # the recommenders' --poll-seconds: a published version is served within about this


class KindServers:
    def __init__(self, work: Path, data_root: Path, retrain_after: int, settings: list[str]):
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        models = work / "models"
        models.mkdir(exist_ok=True)
        shared = f"sqlite:///{work / 'retrain-events.sqlite'}"
        env = {"MOVIEREC_TOKENS": TOKEN}
        self.specs: dict[str, tuple[str, list[str]]] = {
            "trainer": ("trainer_service.server", ["--model-root", str(models), "--data-root", str(data_root),
                                                   "--events", shared,
                                                   "--retrain-after-interactions", str(retrain_after)])}
        stores = {"frozen": "none", "fresh": f"sqlite:///{work / 'fresh-events.sqlite'}", "retrain": shared}
        for setting in settings:
            self.specs[setting] = ("recommender_service.server",
                                   ["--model-root", str(models), "--poll-seconds", str(POLL_SECONDS),
                                    "--events", stores[setting]])
        self.servers = {name: ServerProcess(name, [sys.executable, "-m", module, "--port", "0", *args],
                                            work / f"{name}.log", env, cwd=REPO_ROOT, end_with_launcher=True)
                        for name, (module, args) in self.specs.items()}
        self._end = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def trainer(self) -> ServerProcess:
        return self.servers["trainer"]

    @property
    def recommenders(self) -> dict[str, ServerProcess]:
        return {name: server for name, server in self.servers.items() if name != "trainer"}

    def start(self, timeout: float = 150.0) -> None:
        failures: list[str] = []
        ready: list[threading.Event] = []

        def hold(server: ServerProcess, done: threading.Event) -> None:
            try:
                server.start(timeout)
            except Exception as exc:  # reported below, with the server's log
                failures.append(f"{server.name}: {exc}\n{server.log_tail(20)}")
            finally:
                done.set()
            self._end.wait()

        for server in self.servers.values():
            done = threading.Event()
            thread = threading.Thread(target=hold, args=(server, done), name=f"holds-{server.name}", daemon=True)
            thread.start()
            ready.append(done)
            self._threads.append(thread)
        for done in ready:
            done.wait(timeout + 10)
        if failures or not all(done.is_set() for done in ready):
            self.stop()
            raise RuntimeError(f"servers did not start: {failures or 'timeout'}")

    @staticmethod
    def wait_served(rc, version: int, timeout: float = 120.0) -> None:
        """Until the recommender behind ``rc`` serves ``version`` (or a later one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (rc.model_status().served_version or 0) >= version:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{rc.target} did not serve version {version} within {timeout} s")

    def stop_recommender(self, setting: str) -> None:
        self.servers[setting].terminate()

    def stop(self) -> None:
        for server in self.servers.values():
            if server.alive() and server.process is not None:
                server.process.terminate()  # all stop side by side
        for server in self.servers.values():
            server.terminate()
        self._end.set()
        for thread in self._threads:
            thread.join(5)
