"""The model root's storage layer on a real S3 API (moto on loopback): what
the publisher, retention and the recommender's version cache do when the
store holds partial uploads, is shared by replicas, or cannot be reached."""

from __future__ import annotations

import os

import pytest

from movierec_common import artifact as artifact_format
from movierec_common import model_root
from movierec_common.artifact import VersionMetadata
from recommender_service.version_cache import VersionCache
from tests.artifacts import tiny_artifact
from tests.s3 import s3_server
from trainer_service.publisher import apply_retention, publish, remove_stale_temp_folders

ROOT = "s3://unit/root"


@pytest.fixture(scope="module")
def s3():
    with s3_server("unit") as server:
        yield server


@pytest.fixture
def root(s3):
    yield ROOT
    model_root.remove_tree(ROOT)


def test_publish_uploads_metadata_last_and_never_reuses_a_taken_number(root):
    assert publish(root, tiny_artifact(), VersionMetadata(model_kind="a")) == 1
    manifest = artifact_format.read_metadata(model_root.version_dir(root, 1)).files
    assert set(model_root.files_under(model_root.version_dir(root, 1))) == {*manifest, "metadata.json"}
    # A partial upload (no metadata.json) holds number 2: the next publish takes 3 and leaves 2 alone.
    fs, base = model_root.filesystem(root)
    fs.pipe_file(f"{base}/2/saved_model.pb", b"partial")
    assert publish(root, tiny_artifact(seed=1), VersionMetadata(model_kind="b")) == 3
    assert model_root.read_bytes(model_root.join(root, "2", "saved_model.pb")) == b"partial"
    # Young, it could be an upload in progress: left alone. Once older than the stated age
    # (0 here: the age itself is tests/unit/test_retention.py's), the crashed upload goes, and only it.
    assert remove_stale_temp_folders(root) == []
    assert remove_stale_temp_folders(root, min_age_seconds=0) == ["2"]
    assert model_root.list_versions(root) == [1, 3]


def test_an_unreachable_store_publishes_nothing_and_retention_deletes_nothing(root, s3):
    publish(root, tiny_artifact(), VersionMetadata(model_kind="a"))
    publish(root, tiny_artifact(seed=1), VersionMetadata(model_kind="b"))
    s3.stop()
    try:
        # Not "no versions yet, so this is 1": the listing's error reaches the caller.
        with pytest.raises(model_root.RootUnreachable):
            publish(root, tiny_artifact(seed=2), VersionMetadata(model_kind="c"))
        assert apply_retention(root, keep=1) == []
        with pytest.raises(model_root.RootUnreachable):  # one error, never an empty listing
            model_root.list_versions(root)
    finally:
        s3.start()
    assert model_root.list_versions(root) == [1, 2]


def test_version_cache_copies_only_complete_versions_and_replicas_can_share_its_folder(root, s3, tmp_path):
    publish(root, tiny_artifact(), VersionMetadata(model_kind="a"))
    remote = model_root.version_dir(root, 1)
    fingerprint = model_root.folder_fingerprint(remote)
    first, second = VersionCache(str(tmp_path)), VersionCache(str(tmp_path))
    try:
        copy = first.copy(1, remote, fingerprint)
        artifact_format.verify_manifest(copy, artifact_format.read_metadata(copy).files)
        other = second.copy(1, remote, fingerprint)
        second.keep_only(other)
        assert os.path.isdir(copy), "one replica's clean-up removed another's copy"

        fs, base = model_root.filesystem(root)
        fs.pipe_file(f"{base}/2/saved_model.pb", b"partial")
        with pytest.raises(artifact_format.ArtifactError, match="metadata.json is missing"):
            first.copy(2, model_root.version_dir(root, 2), "x" * 12)

        s3.stop()
        try:
            with pytest.raises(model_root.RootUnreachable):  # no conclusion while unreachable
                model_root.folder_fingerprint(remote)
            with pytest.raises(model_root.RootUnreachable):
                first.copy(1, remote, fingerprint)
        finally:
            s3.start()
    finally:
        first.close()
        second.close()
    assert os.listdir(tmp_path) == []
