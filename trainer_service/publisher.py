"""Publishing a trained model into the model root, atomically.

The recommender must never see half a model, so a version is assembled in a
``.tmp-<n>-<random>`` folder (a name serving ignores), ``metadata.json`` is
written last as the completeness marker, and only then is the folder renamed
to its integer name: a single rename, atomic on POSIX filesystems. A crash at
any point leaves at worst a temp folder, removed at the next start.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Mapping

from movierec_common import artifact as artifact_format
from movierec_common.logs import event
from movierec_common.model_root import TMP_PREFIX, join, list_versions, version_dir, versions_in_use
from movierec_common.tfenv import tensorflow

log = logging.getLogger(__name__)


class PublishCancelled(Exception):
    pass


def remove_stale_temp_folders(root: str) -> list[str]:
    """Deletes leftovers of interrupted publishes. One trainer owns a root."""
    gfile = tensorflow().io.gfile
    removed = []
    if not gfile.exists(root):
        return removed
    for name in gfile.listdir(root):
        name = name.rstrip("/")
        if name.startswith(TMP_PREFIX):
            gfile.rmtree(join(root, name))
            removed.append(name)
    if removed:
        event(log, "removed stale temp folders", folders=removed)
    return removed


def publish(
    root: str,
    model: artifact_format.ModelArtifact,
    metadata: Mapping,
    files: Mapping[str, bytes] = {},
    *,
    should_stop=lambda: False,
) -> int:
    """Writes model, side files and metadata, then renames into the next free version number."""
    gfile = tensorflow().io.gfile
    gfile.makedirs(root)
    version = max(list_versions(root), default=0) + 1
    tmp = join(root, f"{TMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}")
    try:
        artifact_format.save(model, tmp)
        for name, data in files.items():
            with gfile.GFile(join(tmp, name), "wb") as handle:
                handle.write(data)
        record = {
            **metadata,
            "format_version": artifact_format.FORMAT_VERSION,
            "files": artifact_format.file_manifest(tmp),
        }
        with gfile.GFile(join(tmp, artifact_format.METADATA_FILE), "w") as handle:
            handle.write(json.dumps(record, indent=2, sort_keys=True, default=str))
        if should_stop():
            raise PublishCancelled("cancelled before the version was published")
        while True:
            target = version_dir(root, version)
            try:
                gfile.rename(tmp, target, overwrite=False)
                break
            except Exception:
                if not gfile.exists(target):
                    raise
                version += 1  # someone else took the number; never overwrite
    except BaseException:
        if gfile.exists(tmp):
            gfile.rmtree(tmp)
        raise
    event(log, "version published", version=version, path=target)
    return version


def apply_retention(root: str, keep: int) -> list[int]:
    """Deletes all but the newest ``keep`` versions, sparing any a recommender serves."""
    if keep <= 0:
        return []
    gfile = tensorflow().io.gfile
    versions = list_versions(root)
    protected = versions_in_use(root)
    doomed = [v for v in versions[:-keep] if v not in protected]
    for version in doomed:
        gfile.rmtree(version_dir(root, version))
    if doomed:
        event(log, "old versions removed", versions=doomed, kept=versions[-keep:], protected=sorted(protected))
    return doomed
