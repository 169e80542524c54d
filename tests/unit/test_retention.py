"""Retention that never strands a fleet (issue 17, items 7-9), on real SavedModels in a temp folder
and on a real S3 API (moto on loopback).

Versions after the first are byte copies renamed into place, as in test_pin.py: a copy of a
checked version is the same bytes, so it is as valid; a copy with altered bytes is not.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from movierec_common import model_root
from movierec_common.artifact import VersionMetadata
from movierec_common.model_root import SERVING_DIR, list_versions, serving_replicas
from recommender_service.registry import REJECTED, ModelRegistry
from tests.artifacts import tiny_artifact
from trainer_service.publisher import apply_retention, publish, remove_stale_temp_folders

METADATA = VersionMetadata(model_kind="two_tower", metrics={"recall_at_10": 0.25})
HOUR = 3600.0


def add_copy(root, source: int, version: int, *, corrupt: bool = False) -> None:
    staging = root / f".tmp-{version}-copy"
    shutil.copytree(root / str(source), staging)
    if corrupt:  # the right size, the wrong bytes: only a sha256 check can tell
        data = staging / "variables" / "variables.data-00000-of-00001"
        data.write_bytes(bytes(len(data.read_bytes())))
    os.rename(staging, root / str(version))


def numbered(root) -> list[int]:
    return sorted(int(p.name) for p in root.iterdir() if model_root.is_version_name(p.name))


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "models"
    publish(str(root), tiny_artifact(seed=1), METADATA)
    return root


# --------------------------------------------------------------------------- item 9: version names


def test_only_ascii_digits_name_a_version(root):
    (root / "²").mkdir()  # str.isdigit() is true, int() raises
    (root / "٣").mkdir()  # Arabic-Indic three: int() reads 3
    (root / "07").mkdir()
    assert list_versions(str(root)) == [1]
    assert not model_root.is_version_name("٣") and not model_root.is_version_name("")
    assert remove_stale_temp_folders(str(root), min_age_seconds=0) == []  # not versions, not staging
    assert (root / "٣").exists()


# --------------------------------------------------------------------------- item 7: the store's clock


def test_serving_markers_are_judged_by_the_stores_clock_not_the_replicas(root):
    folder = root / SERVING_DIR
    folder.mkdir()
    # A replica whose clock is an hour behind has just written its marker: it is alive.
    (folder / "slow-clock.json").write_text(json.dumps({"version": 1, "updated": time.time() - HOUR}))
    # A marker last written an hour ago (by the store's clock) by a replica whose clock is ahead: dead.
    (folder / "gone.json").write_text(json.dumps({"version": 1, "updated": time.time() + HOUR}))
    old = time.time() - HOUR
    os.utime(folder / "gone.json", (old, old))
    assert serving_replicas(str(root)) == {"slow-clock": 1}
    assert sorted(p.name for p in folder.iterdir()) == ["gone.json", "slow-clock.json"]  # the clock probe is gone


# --------------------------------------------------------------------------- item 7: valid versions


def test_keep_1_with_a_bad_newest_version_keeps_the_newest_valid_one(root):
    add_copy(root, 1, 2)
    add_copy(root, 1, 3, corrupt=True)  # complete and the right sizes, but not the bytes its manifest names
    assert apply_retention(str(root), keep=1) == [1]
    assert numbered(root) == [2, 3]  # 2 is the newest valid; 3 is newer, never counted, kept (its number is taken)
    add_copy(root, 2, 4)
    assert apply_retention(str(root), keep=1) == [2, 3]
    assert numbered(root) == [4]


def test_a_version_some_replica_rejected_is_not_counted_valid(root):
    from movierec_common.rejections import record_rejection

    add_copy(root, 1, 2)
    fingerprint = model_root.folder_fingerprint(str(root / "2"))
    record_rejection(str(root), "replica-b", 2, fingerprint, "smoke query disagrees with the signature")
    assert apply_retention(str(root), keep=1) == []
    assert numbered(root) == [1, 2]
    add_copy(root, 1, 3)
    assert apply_retention(str(root), keep=1) == [1, 2]


def test_a_replica_records_what_it_rejects_beside_its_marker(root):
    from movierec_common.rejections import rejected_fingerprints

    add_copy(root, 1, 2, corrupt=True)
    registry = ModelRegistry(str(root), replica_id="replica-a")
    registry.poll_once()
    assert registry.current().version == 1
    assert {v.version: v.state for v in registry.status()[1]}[2] == REJECTED
    assert rejected_fingerprints(str(root)) == {2: {model_root.folder_fingerprint(str(root / "2"))}}
    assert (root / SERVING_DIR / ".rejected" / "replica-a.json").exists()


def test_a_failed_marker_write_is_shown_on_the_served_version(root, caplog):
    registry = ModelRegistry(str(root), replica_id="replica-a")
    (root / SERVING_DIR).write_text("a file where the markers' folder should be")
    registry.poll_once()
    assert registry.current().version == 1
    served = {v.version: v for v in registry.status()[1]}[1]
    assert served.reason.startswith("serving marker not written: ")
    assert "serving marker not written" in caplog.text
    (root / SERVING_DIR).unlink()
    registry._marker_written = 0.0  # the next refresh is due now rather than in a minute
    registry.poll_once()
    assert {v.version: v for v in registry.status()[1]}[1].reason == ""
    assert serving_replicas(str(root)) == {"replica-a": 1}


# --------------------------------------------------------------------------- item 8: staging clean-up by age


def test_staging_clean_up_leaves_young_folders_alone(root):
    young, old = root / ".tmp-5-aaaa", root / ".tmp-6-bbbb"
    for folder in (young, old):
        folder.mkdir()
        (folder / "saved_model.pb").write_bytes(b"being written")
    then = time.time() - HOUR
    os.utime(old / "saved_model.pb", (then, then))
    os.utime(old, (then, then))
    assert remove_stale_temp_folders(str(root), min_age_seconds=600) == [".tmp-6-bbbb"]
    assert young.exists()


def test_on_an_object_store_a_young_partial_upload_is_left_alone_and_retention_keeps_valid(tmp_path):
    from tests.s3 import s3_server

    root = "s3://retention/root"
    with s3_server("retention"):
        publish(root, tiny_artifact(seed=1), METADATA)
        publish(root, tiny_artifact(seed=2), METADATA)
        fs, base = model_root.filesystem(root)
        fs.pipe_file(f"{base}/3/saved_model.pb", b"partial")  # another upload, in progress
        assert remove_stale_temp_folders(root, min_age_seconds=600) == []
        assert model_root.exists(f"{root}/3/saved_model.pb")
        # Bad newest with keep 1: version 2's bytes altered in place (same size).
        data = f"{base}/2/variables/variables.data-00000-of-00001"
        fs.pipe_file(data, bytes(len(fs.cat_file(data))))
        assert apply_retention(root, keep=1) == []
        assert list_versions(root) == [1, 2, 3]
        assert remove_stale_temp_folders(root, min_age_seconds=0) == ["3"]
