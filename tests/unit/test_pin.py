"""The pin in the model root: the publisher's side (listing, pinning, retention)
and one recommender's registry following it, on real SavedModels in a temp folder.

The registry is driven one ``poll_once`` at a time, so every step is an event
the test waits for, not a sleep. Versions after the first are byte copies made
in a ``.tmp-*`` folder and renamed into place, as a publish does: a poll never
sees half a version, and no test pays for a second SavedModel export.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest

from movierec_common.artifact import VersionMetadata
from movierec_common.model_root import (
    PIN_FILE,
    PinDamaged,
    RootUnreachable,
    filesystem,
    read_pin,
    remove_serving_marker,
    serving_replicas,
    write_pin,
    write_serving_marker,
)
from recommender_service.registry import REJECTED, ModelRegistry
from tests.artifacts import tiny_artifact
from trainer_service.errors import VersionNotFound
from trainer_service.publisher import (
    apply_retention,
    pin_version,
    publish,
    published_version,
    root_versions,
)

# The non-number is what another writer might put there; a reader drops it.
METADATA = VersionMetadata(model_kind="two_tower", metrics={"recall_at_10": 0.25, "note": "not a number"},
                           created_at="2024-05-01T12:00:00+00:00")


def add_copy(root, source: int, version: int, *, corrupt: bool = False) -> None:
    """A new numbered version: a copy of ``source``, built aside and renamed into place."""
    staging = root / f".tmp-{version}-copy"
    shutil.copytree(root / str(source), staging)
    if corrupt:  # the right size, the wrong bytes: only a recommender's sha256 check can tell
        data = staging / "variables" / "variables.data-00000-of-00001"
        data.write_bytes(bytes(len(data.read_bytes())))
    os.rename(staging, root / str(version))


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "models"
    publish(str(root), tiny_artifact(seed=1), METADATA)
    add_copy(root, 1, 2)
    add_copy(root, 1, 3)
    return root


# --------------------------------------------------------------------------- the trainer's side


def test_root_versions_lists_complete_versions_with_pin_and_replicas(root):
    (root / "4").mkdir()  # an interrupted object-store upload: no metadata.json
    (root / "4" / "saved_model.pb").write_bytes(b"partial")
    add_copy(root, 1, 5)
    (root / "5" / "saved_model.pb").write_bytes(b"truncated")  # its manifest's size no longer holds
    write_pin(str(root), 2)
    write_serving_marker(str(root), "host-a-11", 3)
    write_serving_marker(str(root), "host-b-12", 3)
    write_serving_marker(str(root), "host-c-13", 2)

    listing = root_versions(str(root))

    assert [v.version for v in listing.versions] == [3, 2, 1]
    assert listing.pinned_version == 2
    by_version = {v.version: v for v in listing.versions}
    assert [v.version for v in listing.versions if v.pinned] == [2]
    assert by_version[3].served_by == ("host-a-11", "host-b-12")
    assert by_version[2].served_by == ("host-c-13",) and by_version[1].served_by == ()
    first = by_version[1]
    assert first.model_kind == "two_tower"
    assert first.metrics == {"recall_at_10": 0.25}  # numbers only
    assert first.created_at == 1714564800.0
    on_disk = sum(p.stat().st_size for p in (root / "1").rglob("*") if p.is_file())
    assert first.size_bytes == on_disk


def test_pin_version_refuses_what_is_not_complete_and_replaces_a_damaged_pin(root):
    (root / "4").mkdir()
    for missing in (4, 9):
        with pytest.raises(VersionNotFound, match=rf"version {missing} is not a complete version.*1, 2, 3"):
            pin_version(str(root), missing)
    assert read_pin(str(root)) is None

    (root / PIN_FILE).write_text("{damaged")
    with pytest.raises(PinDamaged):
        read_pin(str(root))
    assert pin_version(str(root), 2) is None  # the damaged pin counts as none, and is replaced
    assert read_pin(str(root)) == 2
    assert pin_version(str(root), None) == 2
    assert read_pin(str(root)) is None and not (root / PIN_FILE).exists()
    with pytest.raises(ValueError):
        pin_version(str(root), -1)


def test_retention_spares_the_pinned_and_the_served_versions(root):
    add_copy(root, 1, 4)
    add_copy(root, 1, 5)
    pin_version(str(root), 1)
    write_serving_marker(str(root), "host-a-11", 3)

    assert apply_retention(str(root), keep=1) == [2, 4]
    assert sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) == [1, 3, 5]

    (root / PIN_FILE).write_text("{damaged")  # what is pinned is unknown: delete nothing
    assert apply_retention(str(root), keep=1) == []


def test_a_stopped_replica_removes_its_serving_marker(root):
    write_serving_marker(str(root), "host-a-11", 3)
    assert serving_replicas(str(root)) == {"host-a-11": 3}
    remove_serving_marker(str(root), "host-a-11")
    remove_serving_marker(str(root), "host-a-11")  # twice is harmless
    assert serving_replicas(str(root)) == {}
    assert published_version(str(root), 3).served_by == ()


# --------------------------------------------------------------------------- a recommender's side


def test_registry_follows_the_root_pin_both_ways_and_unpin_returns_to_newest(root):
    registry = ModelRegistry(str(root), replica_id="replica-a")
    registry.poll_once()
    assert registry.current().version == 3 and registry.pinned_version is None and registry.pin_source == ""

    write_pin(str(root), 1)
    registry.poll_once()
    assert registry.current().version == 1
    assert (registry.pinned_version, registry.pin_source, registry.pin_problem) == (1, "MODEL_ROOT", "")
    # The marker is rewritten in the poll that swapped, so the trainer sees the rollback at once.
    assert serving_replicas(str(root)) == {"replica-a": 1}

    add_copy(root, 1, 4)  # a newer version does not move a pinned replica
    registry.poll_once()
    assert registry.current().version == 1

    write_pin(str(root), 2)  # pinned forward, still not the newest
    registry.poll_once()
    assert registry.current().version == 2

    write_pin(str(root), None)
    registry.poll_once()
    assert registry.current().version == 4 and registry.pinned_version is None
    assert serving_replicas(str(root)) == {"replica-a": 4}
    registry.stop()
    assert serving_replicas(str(root)) == {}


def test_a_pin_naming_a_missing_or_rejected_version_keeps_the_current_one(root, caplog):
    add_copy(root, 1, 4, corrupt=True)
    registry = ModelRegistry(str(root))
    registry.poll_once()
    assert registry.current().version == 3  # 4 was rejected, 3 serves
    _, versions = registry.status()
    assert {v.version: v.state for v in versions}[4] == REJECTED

    write_pin(str(root), 9)
    with caplog.at_level(logging.WARNING, logger="recommender_service.registry"):
        for _ in range(3):
            registry.poll_once()
    assert registry.current().version == 3
    assert registry.pin_problem == "pinned version 9 is not in the model root; version 3 keeps serving"
    assert [r.getMessage() for r in caplog.records].count("pin not followed") == 1  # once, not once per poll

    write_pin(str(root), 4)
    registry.poll_once()
    assert registry.current().version == 3
    assert registry.pin_problem.startswith("pinned version 4 was rejected (")
    assert registry.pin_problem.endswith("); version 3 keeps serving")

    write_pin(str(root), 2)
    registry.poll_once()
    assert registry.current().version == 2 and registry.pin_problem == ""


def test_an_unreadable_pin_keeps_what_is_served(root):
    registry = ModelRegistry(str(root))
    write_pin(str(root), 2)
    registry.poll_once()
    assert registry.current().version == 2

    (root / PIN_FILE).write_text(json.dumps({"version": "three"}))
    registry.poll_once()
    assert registry.current().version == 2  # neither the newest nor anything else: no guessing
    assert "the model root's pin cannot be read" in registry.pin_problem

    write_pin(str(root), None)
    registry.poll_once()
    assert registry.current().version == 3 and registry.pin_problem == ""


def test_the_version_flag_overrides_the_root_pin(root):
    write_pin(str(root), 1)
    registry = ModelRegistry(str(root), pinned_version=2)
    registry.poll_once()
    assert registry.current().version == 2
    assert (registry.pinned_version, registry.pin_source) == (2, "VERSION_FLAG")


def test_a_replica_started_later_follows_the_pin_from_its_first_poll(root):
    write_pin(str(root), 1)
    registry = ModelRegistry(str(root))
    registry.poll_once()
    assert registry.current().version == 1
    _, versions = registry.status()
    # The newer versions were never loaded first: the pin decides before anything is tried.
    assert {v.version: v.state for v in versions} == {1: "SERVING", 2: "AVAILABLE", 3: "AVAILABLE"}


# --------------------------------------------------------------------------- on an object store


def test_on_an_object_store_the_pin_follows_the_manifest_and_an_outage_changes_nothing(tmp_path):
    from tests.s3 import s3_server

    root = "s3://pins/root"
    with s3_server("pins") as s3:
        publish(root, tiny_artifact(seed=1), METADATA)
        publish(root, tiny_artifact(seed=2), METADATA)
        fs, base = filesystem(root)
        fs.pipe_file(f"{base}/3/saved_model.pb", b"partial")  # an upload still running: no metadata.json yet
        with pytest.raises(VersionNotFound, match="complete versions: 1, 2"):
            pin_version(root, 3)
        assert pin_version(root, 1) is None
        assert [(v.version, v.pinned) for v in root_versions(root).versions] == [(2, False), (1, True)]

        registry = ModelRegistry(root, cache_dir=str(tmp_path / "cache"))
        try:
            registry.poll_once()
            assert registry.current().version == 1
            s3.stop()  # an outage: the pin cannot be read
            try:
                registry.poll_once()
                assert registry.current().version == 1
                assert registry.pin_problem.startswith("the model root's pin cannot be read")
                with pytest.raises(RootUnreachable):
                    root_versions(root)
            finally:
                s3.start()
            pin_version(root, None)
            registry.poll_once()
            assert registry.current().version == 2 and registry.pin_problem == ""
        finally:
            registry.stop()
