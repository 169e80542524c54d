"""The model root's layout and storage, shared by the publisher and the watcher.

Like TF Serving, a version is a folder whose name is a positive integer;
anything else (``.tmp-*`` work folders, ``.jobs``, ``.serving``) is invisible
to serving.

A root is a local folder or an object-store URL (``s3://bucket/prefix``),
reached through fsspec: TensorFlow 2.21 has no s3 filesystem, and serving
should not need TensorFlow just to list a folder. S3 credentials and endpoint
come from the standard AWS environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``).

The two kinds differ in one way that matters: a local folder can be renamed
atomically, an object store cannot. So on a local root a version appears by
one rename, and on an object store by writing ``metadata.json`` last, after
every file it lists (see trainer_service.publisher); readers count a version
only when that file exists and its manifest verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import time
import uuid
from typing import Any

import fsspec

TMP_PREFIX = ".tmp-"
JOBS_DIR = ".jobs"
SERVING_DIR = ".serving"
SERVING_MARKER_TTL_SECONDS = 300.0
# The operator's pin: every replica serves this version instead of the newest.
PIN_FILE = ".pin.json"

# Each S3 request gives up after a few seconds instead of botocore's default
# minute, so a watcher notices an outage promptly and retries on its next poll.
_S3_OPTIONS = {
    "use_listings_cache": False,  # other processes publish; a cached listing would hide them
    "config_kwargs": {"connect_timeout": 2, "read_timeout": 10, "retries": {"max_attempts": 2}},
}


def is_local(root: str) -> bool:
    return "://" not in root or root.startswith("file://")


def filesystem(location: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem holding ``location`` and the path it knows it by.

    fsspec keeps one instance per set of options, so every call for an
    object store shares one connection pool and event loop.
    """
    protocol = fsspec.core.split_protocol(location)[0] or "file"
    if protocol not in ("s3", "s3a"):
        return fsspec.core.url_to_fs(location)
    # The endpoint is part of the options, so a process whose AWS_ENDPOINT_URL
    # changes gets a filesystem for the new endpoint, not a cached one for the old.
    return fsspec.core.url_to_fs(location, endpoint_url=os.environ.get("AWS_ENDPOINT_URL"), **_S3_OPTIONS)


def join(*parts: str) -> str:
    head, *rest = parts
    return "/".join([head.rstrip("/"), *[p.strip("/") for p in rest]])


def list_names(folder: str, *, strict: bool = False) -> list[str]:
    """Base names of the entries of folder; a missing folder has none.

    A watcher passes ``strict=False``: an unreachable store then looks empty
    and serving carries on. Whoever writes or deletes on the strength of a
    listing (numbering versions, retention, job recovery) passes
    ``strict=True`` and gets the error instead of a wrong "nothing there".
    """
    fs, path = filesystem(folder)
    try:
        return [posixpath.basename(name.rstrip("/")) for name in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return []
    except Exception:  # PermissionError, an unreachable store
        if strict:
            raise
        return []


def list_versions(root: str, *, strict: bool = False) -> list[int]:
    """Integer-named entries of root, ascending."""
    return sorted(int(name) for name in list_names(root, strict=strict) if name.isdigit() and not name.startswith("0"))


def version_dir(root: str, version: int) -> str:
    return join(root, str(version))


def exists(location: str) -> bool:
    fs, path = filesystem(location)
    return fs.exists(path)


def read_bytes(location: str) -> bytes:
    fs, path = filesystem(location)
    return fs.cat_file(path)


def write_bytes(location: str, data: bytes) -> None:
    """Writes a whole file so that readers see the old content or the new, never half.

    A local file is written beside its target and renamed over it; an object
    store's PUT is already all-or-nothing.
    """
    fs, path = filesystem(location)
    if not is_local(location):
        fs.pipe_file(path, data)
        return
    parent = posixpath.dirname(path)
    fs.makedirs(parent, exist_ok=True)
    tmp = join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex[:6]}.tmp")
    try:
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm_file(tmp)
        raise


def remove_tree(location: str) -> None:
    fs, path = filesystem(location)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def files_under(folder: str) -> dict[str, dict[str, Any]]:
    """Every file below folder, by path relative to it, with its size and change stamp."""
    fs, path = filesystem(folder)
    base = path.rstrip("/") + "/"
    found = fs.find(path, detail=True)
    return {name[len(base):]: {"size": info.get("size"),
                               "stamp": info.get("ETag") or info.get("mtime") or info.get("LastModified")}
            for name, info in found.items() if name.startswith(base) and info.get("type") != "directory"}


def folder_fingerprint(folder: str) -> str | None:
    """Changes whenever a file under folder is added, removed, resized or rewritten.

    The recommender retries a rejected version only when this changes, so a
    bad folder costs one load attempt, not one per poll; on an object store it
    costs one listing, and nothing is downloaded until the version is complete.
    None when the folder cannot be listed right now (an unreachable store):
    nothing can be concluded about it until it can.
    """
    try:
        files = files_under(folder)
    except Exception:  # botocore, aiohttp and OS errors alike: no conclusion
        return None
    digest = hashlib.sha256()
    for name, info in sorted(files.items()):
        digest.update(f"{name}:{info['size']}:{info['stamp']}\n".encode())
    return digest.hexdigest()


def download(folder: str, local_folder: str) -> None:
    """Copies every file below folder into local_folder (which must not exist)."""
    fs, path = filesystem(folder)
    fs.get(path.rstrip("/") + "/", local_folder.rstrip("/") + "/", recursive=True)


def write_serving_marker(root: str, replica: str, version: int) -> None:
    """Tells the publisher's retention which version this replica serves."""
    record = json.dumps({"version": version, "updated": time.time()}).encode()
    write_bytes(join(root, SERVING_DIR, f"{replica}.json"), record)


def versions_in_use(root: str, ttl: float = SERVING_MARKER_TTL_SECONDS) -> set[int]:
    """Versions some live recommender serves (markers refreshed within ttl).

    Raises when the markers cannot be listed: "none in use" would let
    retention delete what replicas serve.
    """
    folder = join(root, SERVING_DIR)
    in_use: set[int] = set()
    for name in list_names(folder, strict=True):
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            marker = json.loads(read_bytes(join(folder, name)))
            if time.time() - float(marker["updated"]) <= ttl:
                in_use.add(int(marker["version"]))
        except Exception:
            continue
    return in_use


def write_pin(root: str, version: int | None) -> None:
    """Pins every replica watching root to version (None unpins).

    The pin is one small file in the root, written whole, so it survives
    restarts of every process and each replica sees it on its next poll.
    """
    location = join(root, PIN_FILE)
    if version is None:
        fs, path = filesystem(location)
        if fs.exists(path):
            fs.rm_file(path)
        return
    write_bytes(location, json.dumps({"version": int(version), "updated": time.time()}).encode())


def read_pin(root: str) -> int | None:
    """The pinned version, or None when nothing is pinned.

    Raises when the pin cannot be read (an unreachable store, a damaged
    file): a watcher then keeps what it serves rather than guess.
    """
    location = join(root, PIN_FILE)
    fs, path = filesystem(location)
    try:
        record = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    version = int(record["version"])
    if version < 1:
        raise ValueError(f"{location} names version {version}; versions are positive")
    return version
