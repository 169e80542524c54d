"""The recommender under bad versions, a crashing loader, a vanishing model
root, SIGTERM and SIGKILL, while a client keeps calling: zero failed calls
where promised, and every answer checked against a brute force over the
artifact of the version that gave it."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import RecommenderClient, Unavailable
from movierec.v1 import recommender_pb2, recommender_pb2_grpc
from movierec_common import artifact
from movierec_common.artifact import VersionMetadata
from movierec_common.model_root import SERVING_DIR
from movierec_common.tfenv import tensorflow
from tests.artifacts import tiny_artifact
from tests.load import RotatingLoad, checker
from tests.servers import Scrape, describe, free_port, rejection_reason, start_recommender, still_running
from tests.waiting import wait_for_version
from trainer_service.publisher import publish

pytestmark = pytest.mark.slow


def _write_version(root, version: int, save) -> None:
    """A version folder in the publisher's format, with whatever ``save`` writes."""
    path = root / str(version)
    tmp = root / f".tmp-{version}-test"
    save(str(tmp))
    metadata = artifact.VersionMetadata(model_kind="bad", files=artifact.file_manifest(str(tmp)))
    (tmp / artifact.METADATA_FILE).write_text(metadata.to_text())
    tmp.rename(path)


def _copy_good(root, good: int, version: int):
    shutil.copytree(root / str(good), root / f".tmp-{version}")
    return root / f".tmp-{version}"


def _save_wrong_shape(path: str) -> None:
    art = tiny_artifact()
    bad = dataclasses.replace(art, user_vectors=art.user_vectors[:-3])  # fewer vectors than users
    module = artifact.build_module(bad)
    tensorflow().saved_model.save(module, path, signatures={"serving_default": module.recommend})


def _save_lying_signature(path: str) -> None:
    """Loads fine, but its signature disagrees with its own arrays: the smoke query must catch it."""
    tf = tensorflow()
    module = artifact.build_module(tiny_artifact())

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.int32)])
    def lying(user_id, k):
        out = module.recommend(user_id, k)
        return {**out, "scores": out["scores"] * 0.5 - 1.0}

    module.lying = lying
    tf.saved_model.save(module, path, signatures={"serving_default": lying})


def _save_crashing_signature(path: str) -> None:
    """Loads fine, but running its signature aborts the process that runs it (TensorFlow's Abort op,
    SIGABRT), as a crash inside TensorFlow on a corrupt file would. The smoke query runs it in the
    loader helper: the helper dies, the server must not."""
    tf = tensorflow()
    module = artifact.build_module(tiny_artifact())

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.int32)])
    def crash(user_id, k):
        abort = tf.raw_ops.Abort(error_msg="test: a version whose signature crashes its loader")
        with tf.control_dependencies([abort]):
            return {name: tf.identity(value) for name, value in module.recommend(user_id, k).items()}

    module.crash = crash
    tf.saved_model.save(module, path, signatures={"serving_default": crash})


def _log_events(log_path, name: str, **fields) -> int:
    count = 0
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == name and all(entry.get(k) == v for k, v in fields.items()):
                count += 1
    return count


def _wait_for_log_event(log_path, name: str, timeout: float = 30.0, **fields) -> None:
    deadline = time.monotonic() + timeout
    while _log_events(log_path, name, **fields) == 0:
        assert time.monotonic() < deadline, f"no {name!r} event in {log_path} within {timeout}s"
        time.sleep(0.05)


def test_bad_versions_are_rejected_under_load_once_each(tmp_path):
    root = tmp_path / "models"
    good = tiny_artifact()
    publish(str(root), good, VersionMetadata(model_kind="good"))
    recommender = start_recommender(root, tmp_path)
    log = tmp_path / "recommender.log"
    bad_versions = {}

    def missing_variables(v):
        tmp = _copy_good(root, 1, v)
        for f in (tmp / "variables").glob("variables.data-*"):
            f.unlink()
        tmp.rename(root / str(v))

    def truncated(v):
        tmp = _copy_good(root, 1, v)
        data = next((tmp / "variables").glob("variables.data-*"))
        data.write_bytes(data.read_bytes()[:100])
        tmp.rename(root / str(v))

    def garbage_metadata(v):
        tmp = _copy_good(root, 1, v)
        (tmp / "metadata.json").write_bytes(b"\x89PNG garbage")
        tmp.rename(root / str(v))

    def missing_metadata(v):
        tmp = _copy_good(root, 1, v)
        (tmp / "metadata.json").unlink()
        tmp.rename(root / str(v))

    cases = [
        (missing_variables, "variables.data"),
        (truncated, "truncated"),
        (garbage_metadata, "not valid JSON"),
        (missing_metadata, "metadata.json is missing"),
        (lambda v: _write_version(root, v, _save_wrong_shape), "user_vectors shape"),
        (lambda v: _write_version(root, v, _save_lying_signature), "smoke query"),
        (lambda v: _write_version(root, v, _save_crashing_signature), "the loader process died"),
    ]
    try:
        with RecommenderClient(recommender.address, timeout=10) as rc:
            rc.wait_until_serving(timeout=60)
            with RotatingLoad(recommender.address, good.user_ids, check=checker({1: good})) as load:
                for offset, (make, fragment) in enumerate(cases, start=2):
                    make(offset)
                    reason = rejection_reason(rc, offset, timeout=60.0)
                    assert fragment in reason, reason
                    bad_versions[offset] = reason
                    assert recommender.alive(), f"the server died on version {offset}:\n{recommender.log_tail()}"
                # Every poll after a rejection passes over the versions rejected before it; a few more
                # pass over the last one. Polls come every 0.5 s (tests.servers.start_recommender).
                time.sleep(2)
            assert load.failures == [], load.failures[:5]
            assert load.calls > 100 and set(load.versions) == {1}
            load.assert_rotated()
            assert rc.model_status().served_version == 1
        for version in bad_versions:
            assert _log_events(log, "version rejected", version=version) == 1, version

        # A restart with bad newest versions (the newest crashes its loader again) serves the newest valid
        # one, and the fresh loader that replaced the crashed one loads the next good version.
        recommender.terminate()
        recommender = start_recommender(root, tmp_path)
        with RecommenderClient(recommender.address, timeout=10) as rc:
            rc.wait_until_serving(timeout=60)
            assert rc.recommend("1", k=3).model_version == 1
            assert rejection_reason(rc, len(cases) + 1) == bad_versions[len(cases) + 1]
            newer = tiny_artifact(seed=5)
            version = publish(str(root), newer, VersionMetadata(model_kind="good"))
            wait_for_version(rc, version)
            assert checker({version: newer})(rc.recommend("2", k=7), "2", 7, None) == ""
        print(f"\nbad versions rejected: {len(bad_versions)}; calls {load.calls}, failed {len(load.failures)}")
    finally:
        recommender.terminate()


def test_model_root_unavailable_for_a_while(tmp_path):
    root = tmp_path / "models"
    artifacts = {1: tiny_artifact(seed=1), 2: tiny_artifact(seed=2)}
    publish(str(root), artifacts[1], VersionMetadata(model_kind="good"))
    recommender = start_recommender(root, tmp_path)
    try:
        with RecommenderClient(recommender.address, timeout=10) as rc:
            rc.wait_until_serving(timeout=60)
            channel = grpc.insecure_channel(recommender.address)
            health = health_pb2_grpc.HealthStub(channel)
            # The replica writes its serving marker into the root right after the swap; the root goes after that.
            deadline = time.monotonic() + 30
            while not list((root / SERVING_DIR).glob("*.json")):
                assert time.monotonic() < deadline, "no serving marker in the model root"
                time.sleep(0.05)
            with RotatingLoad(recommender.address, artifacts[1].user_ids, check=checker(artifacts)) as load:
                root.rename(tmp_path / "models-away")
                _wait_for_log_event(tmp_path / "recommender.log",
                                    "model root shows no versions (empty or unreachable); serving continues "
                                    "on the loaded one")
                status = health.Check(health_pb2.HealthCheckRequest(service="movierec.v1.Recommender"), timeout=5)
                assert status.status == health_pb2.HealthCheckResponse.SERVING
                calls_while_away = load.calls
                (tmp_path / "models-away").rename(root)
                assert publish(str(root), artifacts[2], VersionMetadata(model_kind="good")) == 2
                wait_for_version(rc, 2, timeout=30)
            assert load.failures == [], load.failures[:5]
            assert set(load.versions) == {1, 2} and calls_while_away > 0
            load.assert_rotated()
            channel.close()
    finally:
        recommender.terminate()


def _calls_in_flight(metrics_port: int, method: str) -> float:
    """RPCs of ``method`` the server has started and not finished, from its own /metrics."""
    scrape = Scrape(metrics_port)
    return (scrape.total("grpc_server_started_total", grpc_method=method)
            - scrape.total("grpc_server_handled_total", grpc_method=method))


def test_sigterm_finishes_in_flight_calls_then_refuses_new_ones(tmp_path):
    """The batch is on the server when the signal lands (its /metrics count it started, not handled) and
    still running when the server stops taking calls; a new call then gets UNAVAILABLE, and the batch
    its full answer.

    The batch asks for k=100 with exclude_seen=false over 80,000 movies of 256 dimensions and no
    rankings computed at load (--ranking-mb 0), so each of its 1,000 users is a full scan: about 3 s of
    work here, well beyond the 1 s drain that separates the signal from the stop (40,000 movies of 64
    dimensions took 0.7 s on this machine, and the batch could end inside the drain).
    """
    root = tmp_path / "models"
    art = tiny_artifact(users=1000, items=80_000, dim=256)
    publish(str(root), art, VersionMetadata(model_kind="good"))
    metrics_port = free_port()
    recommender = start_recommender(root, tmp_path, "--ranking-mb", "0", "--metrics-port", str(metrics_port))
    # New calls go through a bare channel: the client's own retries would turn a refusal into a wait.
    channel = grpc.insecure_channel(recommender.address, options=[("grpc.enable_retries", 0)])
    stub = recommender_pb2_grpc.RecommenderStub(channel)
    users = art.user_ids.tolist()
    try:
        with RecommenderClient(recommender.address, timeout=120) as rc, ThreadPoolExecutor(1) as pool:
            rc.wait_until_serving(timeout=60)
            stub.GetModelStatus(recommender_pb2.GetModelStatusRequest(), timeout=10)  # connected
            assert _calls_in_flight(metrics_port, "RecommendBatch") == 0
            batch = pool.submit(rc.recommend_batch, users, k=100, exclude_seen=False)
            deadline = time.monotonic() + 30
            while _calls_in_flight(metrics_port, "RecommendBatch") < 1:
                assert not batch.done(), "the batch was answered before the server was seen working on it"
                assert time.monotonic() < deadline, "the batch never reached the server"
                time.sleep(0.01)
            recommender.process.send_signal(signal.SIGTERM)
            assert not batch.done(), "the batch was answered before the signal"

            # During the drain new calls are still answered; once the server stops, they are refused.
            deadline = time.monotonic() + 30
            answered_after_signal = 0
            while True:
                try:
                    stub.GetModelStatus(recommender_pb2.GetModelStatusRequest(), timeout=5)
                    answered_after_signal += 1
                except grpc.RpcError as exc:
                    refusal = exc
                    break
                assert time.monotonic() < deadline, "new calls were still answered 30 s after SIGTERM"
                time.sleep(0.02)
            assert not batch.done(), "the batch ended before the server stopped taking calls: make it bigger"
            assert refusal.code() == grpc.StatusCode.UNAVAILABLE, (refusal.code(), refusal.details())

            result = batch.result(timeout=60)
            assert len(result.results) == len(users)
            assert all(len(r.items) == 100 for r in result.results)
        assert recommender.process.wait(30) == 0, recommender.log_tail()
        with RecommenderClient(recommender.address, timeout=2) as late:
            with pytest.raises(Unavailable):
                late.recommend("1", k=3)
        print(f"\nSIGTERM: the batch of {len(users)} finished after new calls were refused "
              f"({answered_after_signal} answered during the drain)")
    finally:
        channel.close()
        recommender.kill()


@pytest.mark.parametrize("moment", ["starting", "serving"])
def test_kill_9_leaves_no_process_of_the_recommender_behind(tmp_path, moment):
    """kill -9 of a recommender, just started (its loader still importing TensorFlow) or serving:
    within 5 s no process of its tree is left. Found as a user would see it: its loader helper and
    multiprocessing's resource tracker lived on, re-parented to init, with ~600 MB each."""
    root = tmp_path / "models"
    publish(str(root), tiny_artifact(), VersionMetadata(model_kind="good"))
    recommender = start_recommender(root, tmp_path)
    tree: list[psutil.Process] = []
    try:
        if moment == "serving":
            with RecommenderClient(recommender.address, timeout=10) as rc:
                rc.wait_until_serving(timeout=60)
        server = psutil.Process(recommender.process.pid)
        tree = server.children(recursive=True)
        commands = [" ".join(p.cmdline()) for p in tree]
        assert any("spawn_main" in c for c in commands), commands  # the loader helper
        assert any("resource_tracker" in c for c in commands), commands
        killed = time.monotonic()
        recommender.kill()
        left = still_running(tree, timeout=5.0)
        assert left == [], [describe(p) for p in left]
        print(f"\nkill -9 while {moment}: {len(tree)} processes of its tree gone "
              f"{time.monotonic() - killed:.2f} s after")
    finally:
        recommender.kill()
        for process in still_running(tree, timeout=0):
            process.kill()
