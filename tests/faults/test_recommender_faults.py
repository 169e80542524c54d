"""The recommender under bad versions, a vanishing model root and SIGTERM,
while a client keeps calling: zero failed calls where promised."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import RecommenderClient
from movierec_common import artifact as artifact_format
from movierec_common.tfenv import tensorflow
from tests.artifacts import tiny_artifact
from tests.servers import rejection_reason, start_recommender
from trainer_service.publisher import publish

pytestmark = pytest.mark.slow


class CallLoop:
    """Calls Recommend continuously from a few threads and records every outcome."""

    def __init__(self, address: str, threads: int = 3):
        self.client = RecommenderClient(address, timeout=5)
        self.failures: list[str] = []
        self.calls = 0
        self.versions: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, seed: int):
        rng = np.random.default_rng(seed)
        while not self._stop.is_set():
            try:
                recs = self.client.recommend(str(rng.integers(1, 21)), k=5)
                self.versions.append(recs.model_version)
                self.calls += 1
            except Exception as exc:
                self.failures.append(repr(exc))

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.client.close()


def _write_version(root, version: int, save) -> None:
    """A version folder in the publisher's format, with whatever ``save`` writes."""
    path = root / str(version)
    tmp = root / f".tmp-{version}-test"
    save(str(tmp))
    metadata = {"model_kind": "bad", "format_version": artifact_format.FORMAT_VERSION,
                "files": artifact_format.file_manifest(str(tmp))}
    (tmp / artifact_format.METADATA_FILE).write_text(json.dumps(metadata))
    tmp.rename(path)


def _copy_good(root, good: int, version: int):
    shutil.copytree(root / str(good), root / f".tmp-{version}")
    return root / f".tmp-{version}"


def _save_wrong_shape(path: str) -> None:
    art = tiny_artifact()
    bad = dataclasses.replace(art, user_vectors=art.user_vectors[:-3])  # fewer vectors than users
    module = artifact_format._build_module(bad)
    tensorflow().saved_model.save(module, path, signatures={"serving_default": module.recommend})


def _save_lying_signature(path: str) -> None:
    """Loads fine, but its signature disagrees with its own arrays: the smoke query must catch it."""
    tf = tensorflow()
    module = artifact_format._build_module(tiny_artifact())

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.int32)])
    def lying(user_id, k):
        out = module.recommend(user_id, k)
        return {**out, "scores": out["scores"] * 0.5 - 1.0}

    module.lying = lying
    tf.saved_model.save(module, path, signatures={"serving_default": lying})


def _rejections_in_log(log_path, version: int) -> int:
    count = 0
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == "version rejected" and entry.get("version") == version:
                count += 1
    return count




def test_bad_versions_are_rejected_under_load_once_each(tmp_path):
    root = tmp_path / "models"
    publish(str(root), tiny_artifact(), {"model_kind": "good"})
    recommender = start_recommender(root, tmp_path)
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
    ]
    try:
        with RecommenderClient(recommender.address, timeout=10) as rc:
            rc.wait_until_serving(timeout=60)
            with CallLoop(recommender.address) as loop:
                for offset, (make, fragment) in enumerate(cases, start=2):
                    make(offset)
                    reason = rejection_reason(rc, offset, timeout=30.0)
                    assert fragment in reason, reason
                    bad_versions[offset] = reason
                time.sleep(3)  # several polls: nothing is retried while the folders stay the same
            assert loop.failures == [] and loop.calls > 100
            assert set(loop.versions) == {1}
            assert rc.model_status().served_version == 1
        for version in bad_versions:
            assert _rejections_in_log(tmp_path / "recommender.log", version) == 1

        # A restart with bad newest versions serves the newest valid one.
        recommender.terminate()
        recommender = start_recommender(root, tmp_path)
        with RecommenderClient(recommender.address, timeout=10) as rc:
            rc.wait_until_serving(timeout=60)
            assert rc.recommend("1", k=3).model_version == 1
        print(f"\nbad versions rejected: {len(bad_versions)}; calls {loop.calls}, failed {len(loop.failures)}")
    finally:
        recommender.terminate()


def test_model_root_unavailable_for_a_while(tmp_path):
    root = tmp_path / "models"
    publish(str(root), tiny_artifact(seed=1), {"model_kind": "good"})
    recommender = start_recommender(root, tmp_path)
    try:
        with RecommenderClient(recommender.address, timeout=10) as rc:
            rc.wait_until_serving(timeout=60)
            channel = grpc.insecure_channel(recommender.address)
            health = health_pb2_grpc.HealthStub(channel)
            with CallLoop(recommender.address) as loop:
                root.rename(tmp_path / "models-away")
                time.sleep(3)
                status = health.Check(health_pb2.HealthCheckRequest(service="movierec.v1.Recommender"), timeout=5)
                assert status.status == health_pb2.HealthCheckResponse.SERVING
                (tmp_path / "models-away").rename(root)
                publish(str(root), tiny_artifact(seed=2), {"model_kind": "good"})
                deadline = time.monotonic() + 30
                while rc.model_status().served_version != 2:
                    assert time.monotonic() < deadline, "reloads did not resume"
                    time.sleep(0.1)
            assert loop.failures == [] and {1, 2} == set(loop.versions)
            channel.close()
    finally:
        recommender.terminate()


def test_sigterm_finishes_in_flight_calls_then_refuses_new_ones(tmp_path):
    root = tmp_path / "models"
    publish(str(root), tiny_artifact(users=2000, items=1500, dim=64), {"model_kind": "good"})
    recommender = start_recommender(root, tmp_path)
    users = [str(u) for u in range(1, 1001)]
    try:
        with RecommenderClient(recommender.address, timeout=60) as rc:
            rc.wait_until_serving(timeout=60)
            outcome = {}

            def big_batch():
                try:
                    outcome["result"] = rc.recommend_batch(users, k=100)
                except Exception as exc:
                    outcome["error"] = exc

            thread = threading.Thread(target=big_batch)
            thread.start()
            time.sleep(0.15)  # the batch takes ~0.5 s: it is on the server when the signal lands
            started = time.monotonic()
            recommender.process.send_signal(signal.SIGTERM)
            thread.join()
            assert "error" not in outcome, outcome.get("error")
            assert len(outcome["result"].results) == 1000
            assert recommender.process.wait(30) == 0
            assert time.monotonic() - started < 20
        with RecommenderClient(recommender.address, timeout=2) as late:
            with pytest.raises(Exception):
                late.recommend("1", k=3)
    finally:
        recommender.kill()
