"""The model root's layout, shared by the publisher and the watcher.

Like TF Serving, a version is a folder whose name is a positive integer;
anything else (``.tmp-*`` work folders, ``.jobs``) is invisible to serving.
All access goes through ``tf.io.gfile`` so the root may be a local path or any
filesystem TensorFlow supports (gs://, s3://, ram://).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid

from movierec_common.tfenv import tensorflow

TMP_PREFIX = ".tmp-"
JOBS_DIR = ".jobs"


def join(*parts: str) -> str:
    head, *rest = parts
    return "/".join([head.rstrip("/"), *[p.strip("/") for p in rest]])


def list_versions(root: str) -> list[int]:
    """Integer-named entries of root, ascending. A missing root has none."""
    gfile = tensorflow().io.gfile
    try:
        names = gfile.listdir(root)
    except Exception:  # NotFoundError, PermissionDenied: nothing visible right now
        return []
    versions = []
    for name in names:
        name = name.rstrip("/")
        if name.isdigit() and not name.startswith("0"):
            versions.append(int(name))
    return sorted(versions)


def version_dir(root: str, version: int) -> str:
    return join(root, str(version))


def folder_fingerprint(path: str) -> str:
    """Changes whenever a file under path is added, removed, resized or rewritten.

    The recommender retries a rejected version only when this changes, so a
    bad folder costs one load attempt, not one per poll.
    """
    gfile = tensorflow().io.gfile
    digest = hashlib.sha256()
    try:
        for dirpath, _, files in sorted(gfile.walk(path)):
            for name in sorted(files):
                stat = gfile.stat(join(dirpath, name))
                digest.update(f"{dirpath}/{name}:{stat.length}:{stat.mtime_nsec}\n".encode())
    except Exception as exc:  # vanished while walking: its own fingerprint
        digest.update(f"error:{type(exc).__name__}".encode())
    return digest.hexdigest()


SERVING_DIR = ".serving"
SERVING_MARKER_TTL_SECONDS = 300.0


def write_serving_marker(root: str, replica: str, version: int) -> None:
    """Tells the publisher's retention which version this replica serves."""
    gfile = tensorflow().io.gfile
    folder = join(root, SERVING_DIR)
    gfile.makedirs(folder)
    tmp = join(folder, f".{replica}.{uuid.uuid4().hex[:6]}.tmp")
    with gfile.GFile(tmp, "w") as handle:
        handle.write(json.dumps({"version": version, "updated": time.time()}))
    gfile.rename(tmp, join(folder, f"{replica}.json"), overwrite=True)


def versions_in_use(root: str, ttl: float = SERVING_MARKER_TTL_SECONDS) -> set[int]:
    """Versions some live recommender serves (markers refreshed within ttl)."""
    gfile = tensorflow().io.gfile
    folder = join(root, SERVING_DIR)
    in_use: set[int] = set()
    try:
        names = gfile.listdir(folder)
    except Exception:
        return in_use
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            with gfile.GFile(join(folder, name), "r") as handle:
                marker = json.loads(handle.read())
            if time.time() - float(marker["updated"]) <= ttl:
                in_use.add(int(marker["version"]))
        except Exception:
            continue
    return in_use
