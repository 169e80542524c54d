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

import logging
import os
import shutil
import tempfile
import uuid
from typing import Mapping

from movierec_common import artifact as artifact_format
from movierec_common.logs import event
from movierec_common.model_root import (
    TMP_PREFIX, exists, filesystem, files_under, is_local, join, list_names, list_versions, remove_tree, version_dir,
    versions_in_use,
)

log = logging.getLogger(__name__)


class PublishCancelled(Exception):
    pass


def remove_stale_temp_folders(root: str) -> list[str]:
    """Deletes what interrupted publishes left: local temp folders, or
    object-store versions whose metadata.json was never written."""
    removed = []
    for name in list_names(root, strict=True):
        stale = name.startswith(TMP_PREFIX) if is_local(root) else (
            name.isdigit() and not exists(join(root, name, artifact_format.METADATA_FILE)))
        if stale:
            remove_tree(join(root, name))
            removed.append(name)
    if removed:
        event(log, "removed stale temp folders", folders=removed)
    return removed


def _rename_into_place(base: str, staging: str) -> int:
    version = max(list_versions(base, strict=True), default=0) + 1
    while os.path.exists(os.path.join(base, str(version))):
        version += 1  # taken since we listed: never overwrite
    os.rename(staging, os.path.join(base, str(version)))
    return version


def _upload_into_place(root: str, staging: str, should_stop) -> int:
    fs, base = filesystem(root)
    version = max(list_versions(root, strict=True), default=0) + 1
    while fs.find(f"{base.rstrip('/')}/{version}"):
        version += 1  # taken since we listed: never overwrite (nor, below, delete) another's files
    target = f"{base.rstrip('/')}/{version}"
    names = sorted(set(files_under(staging)) - {artifact_format.METADATA_FILE})
    try:
        for name in names:
            fs.put_file(os.path.join(staging, name), f"{target}/{name}")
        if should_stop():
            raise PublishCancelled("cancelled before the version was published")
        fs.put_file(os.path.join(staging, artifact_format.METADATA_FILE), f"{target}/{artifact_format.METADATA_FILE}")
    except BaseException:
        try:
            remove_tree(version_dir(root, version))
        except Exception:  # the store is unreachable: the next start removes it
            log.warning("could not remove a partly uploaded version", extra={"fields": {"version": version}})
        raise
    return version


def publish(
    root: str,
    model: artifact_format.ModelArtifact,
    metadata: Mapping,
    files: Mapping[str, bytes] = {},
    *,
    should_stop=lambda: False,
) -> int:
    """Writes model, side files and metadata, then puts them at the next free version number."""
    fs, base = filesystem(root)
    local = is_local(root)
    if local:
        fs.makedirs(base, exist_ok=True)
        work = os.path.join(base, f"{TMP_PREFIX}{max(list_versions(root), default=0) + 1}-{uuid.uuid4().hex[:8]}")
        staging = work
    else:
        work = tempfile.mkdtemp(prefix="movierec-publish-")
        staging = os.path.join(work, "version")
    try:
        artifact_format.write_version(staging, model, dict(metadata), dict(files))
        if local:
            if should_stop():
                raise PublishCancelled("cancelled before the version was published")
            version = _rename_into_place(base, staging)
        else:
            version = _upload_into_place(root, staging, should_stop)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    event(log, "version published", version=version, path=version_dir(root, version))
    return version


def apply_retention(root: str, keep: int) -> list[int]:
    """Deletes all but the newest ``keep`` versions, sparing any a recommender serves."""
    if keep <= 0:
        return []
    try:
        versions = list_versions(root, strict=True)
        protected = versions_in_use(root)
    except Exception as exc:  # the root cannot be read right now: delete nothing, try after the next publish
        event(log, "retention skipped: the model root cannot be listed", logging.WARNING, error=str(exc))
        return []
    doomed = [v for v in versions[:-keep] if v not in protected]
    for version in doomed:
        remove_tree(version_dir(root, version))
    if doomed:
        event(log, "old versions removed", versions=doomed, kept=versions[-keep:], protected=sorted(protected))
    return doomed
