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
  any state is taken;
* before a version can appear, the trainer checks it (version_checks: the
  manifest, the SavedModel loaded, one query) and records that by content in
  ``.checks/``; on a local root every file and folder is fsynced before the
  rename and the root after it.

One trainer owns a root, enforced by a lease in it (movierec_common.root_lease,
taken at start; a publish confirms it just before the version appears). A
failed upload removes only the files it wrote, and staging is cleaned only
once it is older than a stated age, so nothing here deletes another writer's
upload in progress.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping

from movierec_common import root_lease
from movierec_common.artifact import (
    METADATA_FILE,
    ArtifactError,
    InteractionsRecord,
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
    is_version_name,
    join,
    last_written,
    list_names,
    list_versions,
    local_path,
    read_pin,
    remove_file,
    remove_tree,
    serving_replicas,
    store_now,
    upload_file,
    version_dir,
    versions_in_use,
    write_pin,
)
from movierec_common.signing import PublishingKeys, version_signature
from trainer_service.errors import Cancelled, VersionNotFound
from trainer_service.version_checks import (
    check_before_publishing,
    forget_checks_except,
    newest_valid,
    record_check,
)

log = logging.getLogger(__name__)

# Retention deletes versions and a pin names one; both decide on a listing of
# the root, so they take turns, or a pin could land on a version retention is
# deleting. One trainer owns a root (see above), so a lock in the process is enough.
_VERSIONS_LOCK = threading.Lock()

# Staging untouched for this long is a crashed publish's; younger may be one in progress.
STALE_STAGING_SECONDS = 900.0


def remove_stale_temp_folders(root: str, *, min_age_seconds: float = STALE_STAGING_SECONDS) -> list[str]:
    """Deletes what interrupted publishes left: local temp folders, or
    object-store versions whose metadata.json was never written, once nothing
    under them has been written for ``min_age_seconds`` by the store's clock.

    The age is what keeps this from deleting an upload in progress, whoever
    makes it (the root lease keeps a second trainer out; this holds even for
    one that takes no lease). Run at start and after each publish.
    """
    candidates = [name for name in list_names(root)
                  if (name.startswith(TMP_PREFIX) if is_local(root)
                      else is_version_name(name) and not exists(join(root, name, METADATA_FILE)))]
    removed = []
    now = store_now(root) if candidates and min_age_seconds > 0 else 0.0
    for name in candidates:
        written = last_written(join(root, name)) if min_age_seconds > 0 else None
        if written is not None and now - written < min_age_seconds:
            continue
        remove_tree(join(root, name))
        removed.append(name)
    if removed:
        event(log, "removed stale temp folders", folders=removed, min_age_seconds=min_age_seconds)
    return removed


def _fsync_tree(folder: str) -> None:
    """Flushes every file and folder under folder to disk, so a rename cannot outlive its contents in a crash."""
    for parent, _dirs, names in os.walk(folder, topdown=False):
        for name in names:
            _fsync_path(os.path.join(parent, name))
        _fsync_path(parent)


def _fsync_path(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _rename_into_place(base: str, staging: str) -> int:
    version = max(list_versions(base), default=0) + 1
    while os.path.exists(os.path.join(base, str(version))):
        version += 1  # taken since we listed: never overwrite
    _fsync_tree(staging)
    os.rename(staging, os.path.join(base, str(version)))
    _fsync_path(base)  # the rename itself
    return version


def _upload_into_place(root: str, staging: str, should_stop: Callable[[], bool]) -> int:
    version = max(list_versions(root), default=0) + 1
    while files_under(version_dir(root, version)):
        version += 1  # taken since we listed: never overwrite (nor, below, delete) another's files
    target = version_dir(root, version)
    names = sorted(set(files_under(staging)) - {METADATA_FILE})
    uploaded: list[str] = []
    try:
        for name in [*names, METADATA_FILE]:
            if name == METADATA_FILE:
                if should_stop():
                    raise Cancelled("cancelled before the version was published")
                root_lease.confirm(root)  # still ours: nobody else can be publishing
            upload_file(os.path.join(staging, name), join(target, name))
            uploaded.append(name)
    except BaseException:
        try:  # only what this publish wrote: never another writer's files under the same number
            for name in reversed(uploaded):
                remove_file(join(target, name))
        except RootUnreachable:  # stale staging clean-up removes it later
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
    keys: PublishingKeys | None = None,
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
        # With keys, signed as the number it is about to get (one trainer holds the root's lease).
        write_version(staging, model, metadata, dict(files), sign=None if keys is None else functools.partial(
            version_signature, keys, max(list_versions(root), default=0) + 1))
        # The trainer's own check, recorded by content before the version can appear (version_checks).
        record_check(root, check_before_publishing(staging))
        if local:
            if should_stop():
                raise Cancelled("cancelled before the version was published")
            root_lease.confirm(root)
            version = _rename_into_place(base, staging)
        else:
            version = _upload_into_place(root, staging, should_stop)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    event(log, "version published", version=version, path=version_dir(root, version))
    return version


def apply_retention(root: str, keep: int) -> list[int]:
    """Keeps the newest ``keep`` *valid* versions (version_checks), every pinned and served one,
    and every version newer than the oldest valid one kept; deletes the rest.

    So a bad newest version never costs the good one behind it, and a number
    is never freed for reuse. While fewer than ``keep`` versions are valid,
    nothing is deleted. Reads nothing into a doubt: when the root, the
    markers, the pin, the check records or the rejections cannot be read,
    nothing is deleted. Raises RootUnreachable when a deletion fails.
    """
    if keep <= 0:
        return []
    with _VERSIONS_LOCK:
        try:
            versions = list_versions(root)
            protected = versions_in_use(root)
            pinned = read_pin(root)
            valid = newest_valid(root, versions, keep)
        except (RootUnreachable, PinDamaged) as exc:  # delete nothing now; try again after the next publish
            event(log, "retention skipped: the model root cannot be read", logging.WARNING, error=str(exc))
            return []
        if pinned is not None:
            protected.add(pinned)
        cutoff = min(valid) if len(valid) >= keep else 0
        doomed = [v for v in versions if v < cutoff and v not in protected]
        for version in doomed:
            remove_tree(version_dir(root, version))
        if doomed:
            forget_checks_except(root, [v for v in versions if v not in doomed])
    if doomed:
        event(log, "old versions removed", versions=doomed, valid_kept=sorted(valid), protected=sorted(protected))
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
    interactions: InteractionsRecord | None = None  # recorded interactions it was trained on besides its base data


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
        interactions=metadata.interactions,
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


def pin_version(root: str, version: int | None, keys: PublishingKeys | None = None,
                before_write: Callable[[], None] | None = None) -> int | None:
    """Pins every recommender watching root to ``version`` (None unpins); returns the previous pin.

    Only a complete version can be pinned (VersionNotFound otherwise), and
    retention then keeps it. A damaged pin file is simply replaced. With
    ``keys`` (the trainer's --publish-key-file) the pin, and an unpin, are
    signed (model_root.write_pin). ``before_write`` runs under the lock just
    before the pin is written, as the last moment to refuse: if it raises,
    nothing is written (the trainer checks the caller's deadline there).
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
        if before_write is not None:
            before_write()
        write_pin(root, version, keys)
    if version is None:
        event(log, "versions unpinned: recommenders follow the newest valid version", previous=previous)
    else:
        event(log, "version pinned", version=version, previous=previous)
    return previous
