"""Three recommenders on one model root behind one round-robin client.

Real servers on loopback, real RPCs: calls spread over every replica, a new
version reaches every replica without one ever going back, a ``kill -9`` of
a replica under load costs the caller no call, and the CLI takes the list.
Versions are written with the publisher directly (no trainer needed).
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time

import psutil
import pytest

from clients import RecommenderClient
from clients.cli import main as cli_main
from movierec_common.artifact import VersionMetadata
from tests.artifacts import tiny_artifact
from tests.load import RotatingLoad, brute_force_ids, checker
from tests.servers import Scrape, describe, free_port, start_recommender, still_running
from tests.waiting import until
from trainer_service.publisher import publish

pytestmark = pytest.mark.slow

POLL_SECONDS = 0.5  # what tests.servers.start_recommender passes
ARTIFACTS = {1: tiny_artifact(seed=0), 2: tiny_artifact(seed=1)}  # the versions published below
USERS = ARTIFACTS[1].user_ids


def Load(addresses: str) -> RotatingLoad:
    """Calls from two threads through one balanced client, every answer checked against its version."""
    return RotatingLoad(addresses, USERS, threads=2, check=checker(ARTIFACTS))


class StatusWatch:
    """Asks every replica directly for its served version, every ~50 ms, and keeps the history."""

    def __init__(self, replicas):
        self.clients = [RecommenderClient(r.address, timeout=5) for r in replicas]
        self.history: list[list[tuple[float, int | None]]] = [[] for _ in replicas]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for client, history in zip(self.clients, self.history, strict=True):
                try:
                    version = client.model_status(timeout=2).served_version
                except Exception:  # a killed replica; the others are still watched
                    continue
                history.append((time.monotonic(), version))
            self._stop.wait(0.05)

    def first_seen(self, replica: int, version: int) -> float | None:
        return next((t for t, v in self.history[replica] if v == version), None)

    def __enter__(self) -> StatusWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        for client in self.clients:
            client.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("replicas")
    root = base / "models"
    publish(str(root), ARTIFACTS[1], VersionMetadata(model_kind="good"))
    replicas, metrics_ports = [], []
    try:
        for i in range(3):
            (base / f"replica{i}").mkdir()
            metrics_ports.append(free_port())
            replicas.append(start_recommender(root, base / f"replica{i}", "--metrics-port", str(metrics_ports[-1])))
        for replica in replicas:
            with RecommenderClient(replica.address, timeout=10) as rc:
                rc.wait_until_serving(timeout=60)
        yield {"root": root, "replicas": replicas, "addresses": ",".join(r.address for r in replicas),
               "metrics_ports": metrics_ports}
    finally:
        for replica in replicas:
            replica.terminate()


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(list(args))
    return code, out.getvalue(), err.getvalue()


def _answered(metrics_port: int) -> float:
    """Recommend calls this replica itself has answered OK, from its own /metrics."""
    return Scrape(metrics_port)("grpc_server_handled_total", grpc_type="unary", grpc_service="movierec.v1.Recommender",
                                grpc_method="Recommend", grpc_code="OK")


def _served_everywhere(stack) -> int:
    """The version every replica serves (whichever tests ran before): waits until they agree."""
    def versions() -> set:
        served = set()
        for replica in stack["replicas"]:
            if replica.alive():
                with RecommenderClient(replica.address, timeout=5) as rc:
                    served.add(rc.model_status().served_version)
        return served

    until(lambda: len(versions()) == 1, 60, "the replicas never agreed on one served version")
    (version,) = versions()
    return version


def _cpu_seconds(replicas) -> list[float]:
    return [sum(psutil.Process(r.process.pid).cpu_times()[:2]) for r in replicas]


def test_calls_are_spread_over_every_replica(stack):
    """Evidence from the servers' side: each replica process burns CPU in proportion to the calls it answers.

    Round robin gives each a third; a replica left out would stay at its idle
    cost (polling the model root), an order of magnitude less.
    """
    replicas = stack["replicas"]
    window = 3.0
    before = _cpu_seconds(replicas)
    time.sleep(window)
    idle = [after - b for after, b in zip(_cpu_seconds(replicas), before, strict=True)]
    with Load(stack["addresses"]) as load:
        time.sleep(0.5)  # every connection READY
        calls_before, before = load.calls, _cpu_seconds(replicas)
        time.sleep(window)
        busy = [after - b for after, b in zip(_cpu_seconds(replicas), before, strict=True)]
        calls = load.calls - calls_before
    shares = [b / sum(busy) for b in busy]
    print(f"\nspread: {calls} calls in {window:g}s; replica CPU seconds under load "
          f"{', '.join(f'{b:.2f}' for b in busy)} (shares {', '.join(f'{s:.2f}' for s in shares)}), "
          f"idle {', '.join(f'{i:.3f}' for i in idle)}")
    assert load.failures == [] and calls > 100
    assert set(load.versions) == {1}
    load.assert_rotated()
    for busy_cpu, idle_cpu, share in zip(busy, idle, shares, strict=True):
        assert share > 0.2, shares  # a third each, give or take scheduling
        assert busy_cpu > 5 * max(idle_cpu, 0.01), (busy, idle)


def test_a_new_version_reaches_every_replica_and_none_goes_back(stack):
    replicas = stack["replicas"]
    with Load(stack["addresses"]) as load, StatusWatch(replicas) as watch:
        time.sleep(0.5)
        publish(str(stack["root"]), ARTIFACTS[2], VersionMetadata(model_kind="good"))
        published = time.monotonic()
        deadline = published + 60
        while not all(watch.first_seen(i, 2) for i in range(len(replicas))):
            assert time.monotonic() < deadline, "not every replica serves version 2 after 60 s"
            time.sleep(0.05)
        time.sleep(0.5)  # a few more polls: nothing goes back afterwards either
        # Once every replica serves 2, every answer says 2.
        assert {load.client.recommend(str(u), k=5).model_version for u in range(1, 13)} == {2}

    loads = []
    for replica in replicas:
        with RecommenderClient(replica.address, timeout=5) as rc:
            status = rc.model_status()
        assert status.served_version == 2
        loads.append(status.metrics["serving_load_seconds"])
    seen = [watch.first_seen(i, 2) - published for i in range(len(replicas))]
    print(f"\nconvergence: last of {len(replicas)} replicas served version 2 {max(seen):.2f}s after the publish "
          f"(each: {', '.join(f'{s:.2f}' for s in seen)}s; their load seconds "
          f"{', '.join(f'{x:.2f}' for x in loads)}; poll {POLL_SECONDS}s); calls {load.calls}, "
          f"failed {len(load.failures)}")
    for i, (took, load_seconds) in enumerate(zip(seen, loads, strict=True)):
        assert took <= POLL_SECONDS + load_seconds + 2.0, (i, took, load_seconds)
    for i, history in enumerate(watch.history):
        versions = [v for _, v in history]
        assert len(versions) > 10, f"replica {i} was hardly watched"
        assert versions == sorted(versions), f"replica {i} went back: {versions}"
    assert load.failures == [], load.failures[:5]
    assert set(load.versions) == {1, 2}
    load.assert_rotated()


def test_the_cli_takes_the_replica_list(stack):
    version = _served_everywhere(stack)
    code, out, err = _cli("--recommender", stack["addresses"], "recommend", "3", "-k", "4", "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["model_version"] == version
    assert [item["movie_id"] for item in answer["items"]] == brute_force_ids(ARTIFACTS[version], "3", 4, True)


def test_kill_9_of_a_replica_under_load_fails_no_call(stack):
    replicas = stack["replicas"]
    helpers = psutil.Process(replicas[0].process.pid).children(recursive=True)  # its loader, resource tracker
    assert helpers
    version = _served_everywhere(stack)
    answered_before = _answered(stack["metrics_ports"][0])
    with Load(stack["addresses"]) as load:
        # The victim itself is answering this load (its own count rises), not idle beside it.
        until(lambda: _answered(stack["metrics_ports"][0]) >= answered_before + 20, 30,
              "replica 0 never answered the load")
        replicas[0].kill()  # SIGKILL: no goodbye, no health change, connections just drop
        killed_at = load.calls
        until(lambda: load.calls - killed_at > 300, 30, "the other two answered 300 calls")  # they keep answering
        after = load.calls - killed_at
    print(f"\nkill -9 of 1 of 3 replicas under load: {load.calls} calls, {len(load.failures)} failed, "
          f"{after} answered by the other two after the kill")
    assert load.failures == [], load.failures[:5]
    assert not replicas[0].alive()
    left = still_running(helpers, timeout=5)
    assert left == [], f"the killed replica left processes: {[describe(p) for p in left]}"
    # The dead address may stay in the list: the CLI goes to the live ones.
    code, out, err = _cli("--recommender", stack["addresses"], "recommend", "3", "-k", "4", "--json")
    assert code == 0, err
    assert json.loads(out)["model_version"] == version
