"""Publishing keys end to end: real servers started with --publish-key-file, real
SavedModels, and the reason for a refused version read through GetModelStatus."""

from __future__ import annotations

import time

import pytest

from clients import RecommenderClient, TrainerClient
from movierec_common.artifact import VersionMetadata
from movierec_common.model_root import write_pin
from movierec_common.signing import PublishingKeys
from tests.artifacts import tiny_artifact
from tests.datagen import write_grouplens_files
from tests.servers import rejection_reason, start_recommender, start_trainer
from trainer_service.publisher import publish

pytestmark = pytest.mark.slow

KEY_OLD = "o" * 24 + "-old-publishing-key"
KEY_NEW = "n" * 24 + "-new-publishing-key"
METADATA = VersionMetadata(model_kind="two_tower", created_at="2024-05-01T12:00:00+00:00")


def key_file(path, *keys: str):
    path.write_text("# publishing keys: the first one signs\n" + "".join(f"{key}\n" for key in keys))
    return path


def wait_serving(rc: RecommenderClient, version: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rc.model_status().served_version == version:
            return
        time.sleep(0.1)
    raise AssertionError(f"version {version} was not served within {timeout}s: {rc.model_status()}")


def test_a_recommender_with_keys_serves_only_signed_versions_across_a_key_rotation(tmp_path):
    root = tmp_path / "models"
    publish(str(root), tiny_artifact(seed=1), METADATA, keys=PublishingKeys((KEY_OLD.encode(),)))
    # Rotation, step one: the recommender learns the new key beside the old one.
    recommender = start_recommender(root, tmp_path, "--publish-key-file", str(key_file(tmp_path / "keys", KEY_NEW,
                                                                                     KEY_OLD)))
    try:
        with RecommenderClient(recommender.address, timeout=10) as rc:
            rc.wait_until_serving(timeout=60)
            wait_serving(rc, 1)  # signed with the old key
            publish(str(root), tiny_artifact(seed=2), METADATA)  # unsigned: anyone who can write the root
            assert "version 2 is not signed by a known publishing key" in rejection_reason(rc, 2)
            publish(str(root), tiny_artifact(seed=3), METADATA, keys=PublishingKeys((KEY_NEW.encode(),)))
            wait_serving(rc, 3)  # step two: the trainer signs with the new key

            write_pin(str(root), 1)  # an unsigned pin
            deadline = time.monotonic() + 30
            while "not signed by a known publishing key" not in rc.model_status().pin_problem:
                assert time.monotonic() < deadline, rc.model_status()
                time.sleep(0.1)
            assert rc.model_status().served_version == 3
    finally:
        recommender.terminate()


def test_a_trainer_with_a_key_signs_what_it_publishes_and_pins(tmp_path):
    data_root = write_grouplens_files(tmp_path / "data")
    root = tmp_path / "models"
    keys = key_file(tmp_path / "keys", KEY_NEW)
    trainer = start_trainer(root, tmp_path, "--data-root", str(data_root), "--publish-key-file", str(keys))
    signed = start_recommender(root, tmp_path, "--publish-key-file", str(keys))
    stranger = start_recommender(root, tmp_path, "--publish-key-file", str(key_file(tmp_path / "other", KEY_OLD)))
    try:
        with TrainerClient(trainer.address, timeout=30) as tc:
            for _ in range(2):
                job = tc.wait_for_job(tc.train("bpr", epochs=1, ratings_path="ratings.data", items_path="items.item",
                                               holdout_size=2).id, timeout=300)
                assert job.state == "SUCCEEDED", job.error
            with RecommenderClient(signed.address, timeout=10) as rc:
                wait_serving(rc, 2)
                tc.pin_version(1)
                wait_serving(rc, 1)  # the trainer's pin is signed: followed
                assert rc.model_status().pin_problem == ""
            with RecommenderClient(stranger.address, timeout=10) as other:
                assert "version 2 is not signed by a known publishing key" in rejection_reason(other, 2)
                assert other.model_status().served_version is None  # nothing it may serve
    finally:
        for server in (trainer, signed, stranger):
            server.terminate()
