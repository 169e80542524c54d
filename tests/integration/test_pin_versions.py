"""Pin and rollback across replicas, on real servers: a trainer (tokens on,
``--keep-versions 1``), two recommenders following the model root and a third
held by its own ``--version 2``, all sharing one model root.

Versions 2 and 3 are byte copies of version 1, built in a ``.tmp-*`` folder and
renamed into place as a publish does, so the module pays for one SavedModel
export and one small closed-form training job (which is what runs retention).
Tests run in file order and share the stack: list, refuse, pin, restart a
follower, publish under the pin, unpin.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from clients import ConfigurationError, InvalidArgument, NotFound, RecommenderClient, TrainerClient, Unauthenticated
from clients.cli import main as cli_main
from movierec_common.artifact import VersionMetadata
from tests.artifacts import tiny_artifact
from tests.datagen import write_grouplens_files
from tests.servers import start_recommender, start_trainer
from tests.waiting import settled_state, until, wait_for_version
from trainer_service.publisher import publish

pytestmark = pytest.mark.slow

TOKEN = "pin-token-0123456789abcdef"
POLL_SECONDS = 0.5  # what tests.servers.start_recommender passes
METADATA = VersionMetadata(model_kind="two_tower", metrics={"recall_at_10": 0.25},
                           created_at="2024-05-01T12:00:00+00:00")


def _replica_id(server) -> str:
    return f"{socket.gethostname()}-{server.process.pid}"  # the registry's default id: host and pid


def _status(server):
    with RecommenderClient(server.address, timeout=5) as rc:
        return rc.model_status()


def _launch_replica(stack, name: str, *extra: str):
    """Starts a recommender (from this thread: a server ends with the thread that launched it)."""
    log_dir = stack["base"] / name
    log_dir.mkdir(exist_ok=True)
    replica = start_recommender(stack["root"], log_dir, *extra)
    stack["started"].append(replica)
    return replica


def _until_serving(*replicas) -> None:
    """Waits for the replicas side by side: each loads its first version in its own helper process."""
    def wait(replica):
        with RecommenderClient(replica.address, timeout=10) as rc:
            rc.wait_until_serving(timeout=90)

    with ThreadPoolExecutor(len(replicas)) as pool:
        list(pool.map(wait, replicas))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("pin")
    root = base / "models"
    publish(str(root), tiny_artifact(seed=1), METADATA)
    for version in (2, 3):
        shutil.copytree(root / "1", root / f".tmp-{version}-copy")
        os.rename(root / f".tmp-{version}-copy", root / str(version))
    data_root = write_grouplens_files(base / "data")
    stack = {"base": base, "root": root, "started": []}
    try:
        # A recommender says it listens at once and warms TensorFlow up in its helper afterwards, so
        # the three warm up while the trainer starts.
        stack["followers"] = [_launch_replica(stack, f"follower{i}") for i in range(2)]
        stack["flagged"] = _launch_replica(stack, "flagged", "--version", "2")
        stack["trainer"] = start_trainer(root, base, "--keep-versions", "1", "--data-root", str(data_root),
                                         env={"MOVIEREC_TOKENS": TOKEN, "MOVIELENS_DIR": ""})
        stack["started"].append(stack["trainer"])
        _until_serving(*stack["followers"], stack["flagged"])
        yield stack
    finally:
        for server in stack["started"]:  # all stop side by side too
            if server.process.poll() is None:
                server.process.send_signal(signal.SIGTERM)
        for server in stack["started"]:
            server.terminate()


@pytest.fixture
def tc(stack):
    with TrainerClient(stack["trainer"].address, timeout=10, token=TOKEN) as client:
        yield client


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_list_versions_says_what_each_is_and_which_replicas_serve_it(stack, tc):
    followers = sorted(_replica_id(r) for r in stack["followers"])
    # A replica marks a version in the poll that swaps it in; every replica serves by now.
    listing = until(lambda: (v := tc.list_versions()) and v.versions[0].served_by == followers and v,
                     10, "both followers listed as serving version 3")
    assert [v.version for v in listing] == [3, 2, 1]
    assert [v.served_by for v in listing][1:] == [[_replica_id(stack["flagged"])], []]
    assert listing.pinned_version is None and not any(v.pinned for v in listing)
    on_disk = sum(p.stat().st_size for p in (stack["root"] / "1").rglob("*") if p.is_file())
    for version in listing:
        assert version.model_kind == "two_tower" and version.metrics == {"recall_at_10": 0.25}
        assert version.created_at.isoformat() == "2024-05-01T12:00:00+00:00"
        assert version.size_bytes == on_disk  # byte copies

    code, out, err = _cli("--trainer", stack["trainer"].address, "versions")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["version", "kind", "recall@10", "created", "size", "pinned", "served", "by"]
    assert rows[1][:3] == ["3", "two_tower", "0.2500"] and rows[1][-2:] == [f"{followers[0]},", followers[1]]
    assert rows[-1][:2] == ["pinned:", "none"]


def test_pin_version_needs_a_token_and_a_complete_version(stack, tc, monkeypatch):
    address = stack["trainer"].address
    for token in ("", "wrong-token-0123456789"):
        with TrainerClient(address, timeout=10, token=token) as other:
            assert len(other.list_versions()) == 3  # reading stays open
            with pytest.raises(Unauthenticated):
                other.pin_version(1)
            with pytest.raises(Unauthenticated):
                other.unpin()
    with pytest.raises(NotFound, match=r"version 9 is not a complete version .* complete versions: 1, 2, 3"):
        tc.pin_version(9)
    (stack["root"] / "7").mkdir()  # a number without metadata.json: an interrupted upload, never complete
    try:
        with pytest.raises(NotFound, match="version 7 is not a complete version"):
            tc.pin_version(7)
    finally:
        (stack["root"] / "7").rmdir()
    with pytest.raises(InvalidArgument, match="or 0 to unpin; got -2"):
        tc.pin_version(-2)
    with pytest.raises(ConfigurationError, match=r"call unpin\(\)"):
        tc.pin_version(0)  # refused before sending: on the wire 0 means unpin
    assert tc.list_versions().pinned_version is None  # nothing above changed the pin

    monkeypatch.setenv("MOVIEREC_TOKEN", TOKEN)
    code, _, err = _cli("--trainer", address, "pin", "9")
    assert code == 1 and err.startswith("error: PinVersion at ") and err.rstrip().endswith("(NOT_FOUND)")
    code, _, err = _cli("--trainer", address, "pin", "0")
    assert code == 2 and "must be a positive integer" in err


def test_a_pin_reaches_every_follower_within_a_poll_and_a_load_and_not_the_flagged_replica(stack, tc):
    followers = stack["followers"]
    assert [_status(r).served_version for r in followers] == [3, 3]

    pin = tc.pin_version(1)
    pinned_at = time.monotonic()
    assert (pin.pinned_version, pin.previous_pinned_version) == (1, None)
    for replica in followers:
        with RecommenderClient(replica.address, timeout=5) as rc:
            wait_for_version(rc, 1, timeout=30)
    took = time.monotonic() - pinned_at
    statuses = [_status(r) for r in followers]
    load_seconds = max(s.metrics["serving_load_seconds"] for s in statuses)  # loading version 1 itself
    print(f"\npin: both followers served version 1 {took:.2f}s after PinVersion returned "
          f"(poll {POLL_SECONDS}s; loading it took up to {load_seconds:.2f}s)")
    assert took <= POLL_SECONDS + load_seconds + 2.0  # the next poll sees the pin: no other wait
    for status in statuses:
        assert (status.pinned_version, status.pin_source, status.pin_problem) == (1, "MODEL_ROOT", "")
    flagged = _status(stack["flagged"])  # its own --version wins over the model root's pin
    assert (flagged.served_version, flagged.pinned_version, flagged.pin_source) == (2, 2, "VERSION_FLAG")
    code, out, err = _cli("--recommender", stack["flagged"].address, "status")
    assert code == 0, err
    assert "pinned version: 2 (this replica's --version, over the model root's pin)" in out

    listing = tc.list_versions()
    assert listing.pinned_version == 1 and [v.version for v in listing if v.pinned] == [1]
    served_by = {v.version: v.served_by for v in listing}
    assert served_by[1] == sorted(_replica_id(r) for r in followers) and served_by[3] == []


def test_a_restarted_follower_serves_the_pin(stack, tc):
    old = stack["followers"][0]
    old_id = _replica_id(old)
    old.terminate()
    assert old_id not in {r for v in tc.list_versions() for r in v.served_by}  # it said goodbye
    new = _launch_replica(stack, "follower0-restarted")
    _until_serving(new)
    stack["followers"][0] = new
    status = _status(new)
    assert status.served_version == 1 and status.pin_source == "MODEL_ROOT"
    # It went straight to the pin: the newer versions were never loaded.
    assert {v.version: v.state for v in status.versions} == {1: "SERVING", 2: "AVAILABLE", 3: "AVAILABLE"}
    until(lambda: _replica_id(new) in {r for v in tc.list_versions() if v.version == 1 for r in v.served_by},
           10, "the restarted follower listed as serving version 1")


def test_publishing_under_the_pin_moves_no_replica_and_retention_keeps_the_pinned_version(stack, tc):
    job = tc.wait_for_job(tc.train("ease", ratings_path="ratings.data", items_path="items.item", holdout_size=2,
                                   refit=False).id, timeout=300)
    assert job.state == "SUCCEEDED" and job.model_version == 4, job.error or job.not_published_reason
    # --keep-versions 1: the newest stays, the pinned one stays, the one the flagged replica serves stays.
    assert sorted(int(p.name) for p in stack["root"].iterdir() if p.name.isdigit()) == [1, 2, 4]
    assert [v.version for v in tc.list_versions()] == [4, 2, 1]
    # Every replica has seen version 4 and settled on what to do with it: nobody moves to it.
    for replica in [*stack["followers"], stack["flagged"]]:
        with RecommenderClient(replica.address, timeout=5) as rc:
            assert settled_state(rc, 4, timeout=30) == "AVAILABLE"
    assert [_status(r).served_version for r in stack["followers"]] == [1, 1]
    assert _status(stack["flagged"]).served_version == 2
    with pytest.raises(NotFound, match="version 3 is not a complete version .* complete versions: 1, 2, 4"):
        tc.pin_version(3)  # deleted by retention


def test_unpin_returns_every_follower_to_the_newest(stack, tc, monkeypatch):
    monkeypatch.setenv("MOVIEREC_TOKEN", TOKEN)
    code, out, err = _cli("--trainer", stack["trainer"].address, "unpin")
    assert code == 0, err
    assert out.startswith("unpinned (before: 1)")
    for replica in stack["followers"]:
        with RecommenderClient(replica.address, timeout=5) as rc:
            wait_for_version(rc, 4, timeout=30)
    for replica in stack["followers"]:
        status = _status(replica)
        assert (status.pinned_version, status.pin_source, status.pin_problem) == (None, None, "")
    assert _status(stack["flagged"]).served_version == 2
    assert tc.list_versions().pinned_version is None
