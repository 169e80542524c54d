"""Publishing a trained model into the model root, so that no reader ever sees half a model.

The contract, on both kinds of root (see movierec_common.model_root):

* a version is assembled completely, SavedModel and side files first and
  ``metadata.json`` (with a size + sha256 manifest of every other file) last;
* on a **local folder** it is assembled in ``<root>/.tmp-<n>-<random>`` (a
  name serving ignores) and appears by one rename to ``<root>/<n>``, atomic
  on POSIX; a crash leaves at worst a temp folder, removed at the next start;
* on an **object store**, which has no rename, it is assembled in a local
  staging folder and uploaded into ``<root>/<n>/`` file by file,
  ``metadata.json`` last; until that file exists and its manifest verifies,
  readers treat the version as incomplete. A crash leaves an integer folder
  without ``metadata.json``, which is never served and is removed at the next
  start;
* a number is never reused or overwritten: a number whose folder exists in
  any state is taken.

One trainer owns a root. Two trainers publishing into one object-store root
at the same moment could pick the same number, and the loser's files would
mix with the winner's; the manifest then fails and readers refuse the
version, so nothing wrong is served, but a publish is lost. Run one trainer
per root (it queues its own jobs) and scale its training out with --workers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping

from movierec_common.artifact import (
    METADATA_FILE,
    ArtifactError,
    ModelArtifact,
    VersionMetadata,
    read_metadata,
    write_version,
)
from movierec_common.logs import event
from movierec_common.model_root import (
    TMP_PREFIX,
    PinDamaged,
    RootUnreachable,
    exists,
    files_under,
    is_local,
    join,
    list_names,
    list_versions,
    local_path,
    read_pin,
    remove_tree,
    serving_replicas,
    upload_file,
    version_dir,
    versions_in_use,
    write_pin,
)
from trainer_service.errors import Cancelled, VersionNotFound

log = logging.getLogger(__name__)

# Retention deletes versions and a pin names one; both decide on a listing of
# the root, so they take turns, or a pin could land on a version retention is
# deleting. One trainer owns a root (see above), so a lock in the process is enough.
_VERSIONS_LOCK = threading.Lock()


def remove_stale_temp_folders(root: str) -> list[str]:
    """Deletes what interrupted publishes left: local temp folders, or
    object-store versions whose metadata.json was never written."""
    removed = []
    for name in list_names(root):
        stale = name.startswith(TMP_PREFIX) if is_local(root) else (
            name.isdigit() and not exists(join(root, name, METADATA_FILE)))
        if stale:
            remove_tree(join(root, name))
            removed.append(name)
    if removed:
        event(log, "removed stale temp folders", folders=removed)
    return removed


def _rename_into_place(base: str, staging: str) -> int:
    version = max(list_versions(base), default=0) + 1
    while os.path.exists(os.path.join(base, str(version))):
        version += 1  # taken since we listed: never overwrite
    os.rename(staging, os.path.join(base, str(version)))
    return version


def _upload_into_place(root: str, staging: str, should_stop: Callable[[], bool]) -> int:
    version = max(list_versions(root), default=0) + 1
    while files_under(version_dir(root, version)):
        version += 1  # taken since we listed: never overwrite (nor, below, delete) another's files
    target = version_dir(root, version)
    names = sorted(set(files_under(staging)) - {METADATA_FILE})
    try:
        for name in names:
            upload_file(os.path.join(staging, name), join(target, name))
        if should_stop():
            raise Cancelled("cancelled before the version was published")
        upload_file(os.path.join(staging, METADATA_FILE), join(target, METADATA_FILE))
    except BaseException:
        try:
            remove_tree(target)
        except RootUnreachable:  # the next start removes it
            log.warning("could not remove a partly uploaded version", extra={"fields": {"version": version}})
        raise
    return version


def publish(
    root: str,
    model: ModelArtifact,
    metadata: VersionMetadata,
    files: Mapping[str, bytes] = {},
    *,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Writes model, side files and metadata, then puts them at the next free version number.

    Raises ``Cancelled`` when ``should_stop`` says so before the version
    appears (nothing of it is left), ``RootUnreachable`` when the store fails.
    """
    local = is_local(root)
    if local:
        base = local_path(root)
        os.makedirs(base, exist_ok=True)
        work = os.path.join(base, f"{TMP_PREFIX}{max(list_versions(root), default=0) + 1}-{uuid.uuid4().hex[:8]}")
        staging = work
    else:
        work = tempfile.mkdtemp(prefix="movierec-publish-")
        staging = os.path.join(work, "version")
    try:
        write_version(staging, model, metadata, dict(files))
        if local:
            if should_stop():
                raise Cancelled("cancelled before the version was published")
            version = _rename_into_place(base, staging)
        else:
            version = _upload_into_place(root, staging, should_stop)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    event(log, "version published", version=version, path=version_dir(root, version))
    return version


def apply_retention(root: str, keep: int) -> list[int]:
    """Deletes all but the newest ``keep`` versions, sparing any a recommender serves and the pinned one."""
    if keep <= 0:
        return []
    with _VERSIONS_LOCK:
        try:
            versions = list_versions(root)
            protected = versions_in_use(root)
            pinned = read_pin(root)
        except (RootUnreachable, PinDamaged) as exc:  # delete nothing now; try again after the next publish
            event(log, "retention skipped: the model root cannot be read", logging.WARNING, error=str(exc))
            return []
        if pinned is not None:
            protected.add(pinned)
        doomed = [v for v in versions[:-keep] if v not in protected]
        for version in doomed:
            remove_tree(version_dir(root, version))
    if doomed:
        event(log, "old versions removed", versions=doomed, kept=versions[-keep:], protected=sorted(protected))
    return doomed


# --------------------------------------------------------------------------- versions and the pin


@dataclasses.dataclass(frozen=True)
class PublishedVersion:
    """A complete version as its metadata.json describes it, with who serves it."""

    version: int
    model_kind: str
    metrics: dict[str, float]
    created_at: float | None  # seconds since the epoch; None when metadata.json does not say
    size_bytes: int
    pinned: bool = False
    served_by: tuple[str, ...] = ()  # replica ids, from their serving markers


@dataclasses.dataclass(frozen=True)
class RootVersions:
    versions: list[PublishedVersion]  # newest first
    pinned_version: int | None  # may name a version not listed (a folder deleted by hand)


def published_version(root: str, version: int) -> PublishedVersion | None:
    """The version if it is complete, else None (missing, still being written, or damaged).

    Complete as the publishing protocol defines it: ``metadata.json`` parses
    and every file of its manifest is there with its size. A publish in
    progress on an object store, or two publishes mixed into one folder,
    fail this; the sha256 of each file is left to the recommender, which
    verifies it before loading, because hashing every byte of every version
    for a listing would read the whole root. Raises when the root cannot be read.
    """
    path = version_dir(root, version)
    try:
        metadata = read_metadata(path)
    except ArtifactError:
        return None
    files = files_under(path)
    if not metadata.files:
        return None
    for name, entry in metadata.files.items():
        if (files.get(name) or {}).get("size") != entry.size:
            return None
    return PublishedVersion(
        version=version,
        model_kind=metadata.model_kind,
        metrics=dict(metadata.metrics),
        created_at=metadata.created_at_seconds,
        size_bytes=sum(int(info.get("size") or 0) for info in files.values()),
    )


def root_versions(root: str) -> RootVersions:
    """Every complete version, newest first, with the pin and the replicas serving each.

    Raises when the root, its serving markers or its pin cannot be read
    (PinDamaged for a pin file that names no version).
    """
    pinned = read_pin(root)
    serving = serving_replicas(root)
    found = []
    for version in reversed(list_versions(root)):
        info = published_version(root, version)
        if info is not None:
            replicas = tuple(sorted(replica for replica, served in serving.items() if served == version))
            found.append(dataclasses.replace(info, pinned=version == pinned, served_by=replicas))
    return RootVersions(versions=found, pinned_version=pinned)


def pin_version(root: str, version: int | None) -> int | None:
    """Pins every recommender watching root to ``version`` (None unpins); returns the previous pin.

    Only a complete version can be pinned (VersionNotFound otherwise), and
    retention then keeps it. A damaged pin file is simply replaced.
    """
    if version is not None and version < 1:
        raise ValueError(f"versions are positive, got {version}")
    with _VERSIONS_LOCK:
        try:
            previous = read_pin(root)
        except PinDamaged:
            previous = None
        if version is not None and published_version(root, version) is None:
            complete = [v for v in list_versions(root) if published_version(root, v) is not None]
            known = ", ".join(map(str, complete[-10:])) if complete else "none yet"
            if len(complete) > 10:
                known = f"..., {known}"
            raise VersionNotFound(
                f"version {version} is not a complete version in the model root {root} (never published, still "
                f"being written, or deleted); complete versions: {known}. `movierec versions` lists them")
        write_pin(root, version)
    if version is None:
        event(log, "versions unpinned: recommenders follow the newest valid version", previous=previous)
    else:
        event(log, "version pinned", version=version, previous=previous)
    return previous
