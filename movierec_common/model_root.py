"""The model root's layout and storage, shared by the publisher and the watcher.

Like TF Serving, a version is a folder whose name is a positive integer;
anything else (``.tmp-*`` work folders, ``.jobs``, ``.serving``) is invisible
to serving. State every replica must share lives here too, under dot-names:
which version each replica serves (``.serving/<replica>.json``, read by
retention and ListVersions) and the operator's pin (``.pin.json``, read by
every replica at each poll), so it needs no coordination service and
survives restarts of every process.

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

**One error at the boundary.** Every function here that touches storage
raises :class:`RootUnreachable` when the store cannot answer (an OS error, a
botocore or aiohttp error, a timeout), translated in one table
(:data:`_STORE_ERRORS`) as httpx maps its transports' errors, and
:class:`RootAccessDenied`, a subclass, when it answered "not allowed"
(retrying will not help). Callers catch only those. ``FileNotFoundError`` is
not a failure but an answer ("nothing there") and passes through where a
function documents it. Nothing here returns an empty list or ``None`` to mean
"could not tell".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import posixpath
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import IO, Any

import fsspec

from movierec_common import signing

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


class RootUnreachable(Exception):
    """The model root could not be read or written just now; says nothing about what it holds.

    Serving carries on with what it has and tries again at its next poll; a
    writer (publishing, retention, the pin) does nothing rather than act on a
    guess. ``location`` is what was being reached.
    """

    def __init__(self, message: str, location: str = ""):
        super().__init__(message)
        self.location = location


class RootAccessDenied(RootUnreachable):
    """The store answered, and refused: these credentials may not do this. Retrying will not help."""


def _store_errors() -> tuple[type[BaseException], ...]:
    """What fsspec's backends raise when a store cannot answer: the one table of them.

    ``OSError`` covers local folders and what s3fs translates (``PermissionError``
    is handled before this table, ``FileNotFoundError`` is an answer, not a
    failure); botocore's and aiohttp's own errors and timeouts reach callers
    untranslated when the endpoint is down or slow.
    """
    errors: list[type[BaseException]] = [OSError, TimeoutError, asyncio.TimeoutError]
    try:
        import botocore.exceptions

        errors += [botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError]
    except ImportError:  # no S3 support installed: local roots only
        pass
    try:
        import aiohttp

        errors.append(aiohttp.ClientError)
    except ImportError:
        pass
    return tuple(errors)


_STORE_ERRORS = _store_errors()


@contextlib.contextmanager
def _boundary(action: str, location: str) -> Iterator[None]:
    """Translates what a store raises into RootUnreachable / RootAccessDenied; FileNotFoundError passes."""
    try:
        yield
    except (FileNotFoundError, RootUnreachable):
        raise
    except PermissionError as exc:
        raise RootAccessDenied(f"{action} {location}: permission denied ({exc})", location) from exc
    except _STORE_ERRORS as exc:
        raise RootUnreachable(f"{action} {location} failed: {type(exc).__name__}: {_first_line(exc)}",
                              location) from exc


# The boundary, for modules that make a store call this one has no function for (root_lease's conditional writes).
store_boundary = _boundary


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def is_local(root: str) -> bool:
    return "://" not in root or root.startswith("file://")


def filesystem(location: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem holding ``location`` and the path it knows it by.

    fsspec keeps one instance per set of options, so every call for an
    object store shares one connection pool and event loop. Raw access,
    outside the error boundary: this module's own functions, and tests that
    damage a root on purpose, use it; everything else calls the functions below.
    """
    protocol = fsspec.core.split_protocol(location)[0] or "file"
    if protocol not in ("s3", "s3a"):
        return _url_to_fs(location)
    # The endpoint is part of the options, so a process whose AWS_ENDPOINT_URL
    # changes gets a filesystem for the new endpoint, not a cached one for the old.
    return _url_to_fs(location, endpoint_url=os.environ.get("AWS_ENDPOINT_URL"), **_S3_OPTIONS)


def _url_to_fs(location: str, **options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(location, **options)
    return fs, str(path)


def local_path(location: str) -> str:
    """The path a local root (a folder or a ``file://`` URL) has on this machine, for code that needs a real path."""
    if not is_local(location):
        raise ValueError(f"{location} is not on this machine")
    return filesystem(location)[1]


def join(*parts: str) -> str:
    head, *rest = parts
    return "/".join([head.rstrip("/"), *[p.strip("/") for p in rest]])


def list_names(folder: str) -> list[str]:
    """Base names of the entries of folder; a missing folder has none. Raises RootUnreachable."""
    fs, path = filesystem(folder)
    try:
        with _boundary("listing", folder):
            return [posixpath.basename(name.rstrip("/")) for name in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return []


def is_version_name(name: str) -> bool:
    """A version folder's name: a positive integer in ASCII digits without leading zeros, as TF Serving's.

    ASCII only: ``str.isdigit`` also accepts ``²`` (which ``int`` refuses) and
    ``٣`` (which ``int`` reads as 3), so a stray folder could crash a listing
    or pose as a version.
    """
    return name.isascii() and name.isdigit() and not name.startswith("0")


def list_versions(root: str) -> list[int]:
    """Integer-named entries of root, ascending. Raises RootUnreachable."""
    return sorted(int(name) for name in list_names(root) if is_version_name(name))


def version_dir(root: str, version: int) -> str:
    return join(root, str(version))


def exists(location: str) -> bool:
    fs, path = filesystem(location)
    with _boundary("checking", location):
        return bool(fs.exists(path))


def read_bytes(location: str) -> bytes:
    """A whole file. Raises FileNotFoundError when it is not there, RootUnreachable when the store cannot say."""
    fs, path = filesystem(location)
    with _boundary("reading", location):
        return bytes(fs.cat_file(path))


@contextlib.contextmanager
def open_for_reading(location: str) -> Iterator[IO[bytes]]:
    """A file opened for reading in binary; errors while opening or reading cross as RootUnreachable."""
    fs, path = filesystem(location)
    with _boundary("reading", location), fs.open(path, "rb") as handle:
        yield handle


def upload_file(local_path: str, location: str) -> None:
    """Copies one local file to location (a folder's parents are made as needed)."""
    fs, path = filesystem(location)
    with _boundary("uploading to", location):
        if is_local(location):
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
        fs.put_file(local_path, path)


def write_bytes(location: str, data: bytes) -> None:
    """Writes a whole file so that readers see the old content or the new, never half.

    A local file is written beside its target and renamed over it; an object
    store's PUT is already all-or-nothing.
    """
    fs, path = filesystem(location)
    with _boundary("writing", location):
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


def remove_file(location: str) -> bool:
    """Deletes one file; False when it was not there."""
    fs, path = filesystem(location)
    try:
        with _boundary("removing", location):
            fs.rm_file(path)
    except FileNotFoundError:
        return False
    return True


def remove_tree(location: str) -> None:
    fs, path = filesystem(location)
    with _boundary("removing", location):
        if fs.exists(path):
            fs.rm(path, recursive=True)


def files_under(folder: str) -> dict[str, dict[str, Any]]:
    """Every file below folder, by path relative to it, with its size and change stamp; {} for a missing folder."""
    fs, path = filesystem(folder)
    base = path.rstrip("/") + "/"
    with _boundary("listing", folder):
        found = fs.find(path, detail=True)
    return {name[len(base):]: {"size": info.get("size"),
                               "stamp": info.get("ETag") or info.get("mtime") or info.get("LastModified")}
            for name, info in found.items() if name.startswith(base) and info.get("type") != "directory"}


def folder_fingerprint(folder: str) -> str:
    """Changes whenever a file under folder is added, removed, resized or rewritten.

    The recommender retries a rejected version only when this changes, so a
    bad folder costs one load attempt, not one per poll; on an object store it
    costs one listing, and nothing is downloaded until the version is complete.
    Raises RootUnreachable when the folder cannot be listed right now: nothing
    can be concluded about it until it can.
    """
    files = files_under(folder)
    digest = hashlib.sha256()
    for name, info in sorted(files.items()):
        digest.update(f"{name}:{info['size']}:{info['stamp']}\n".encode())
    return digest.hexdigest()


def download(folder: str, local_folder: str, names: Iterable[str] | None = None) -> None:
    """Copies the files ``names`` (relative to folder, as files_under lists them; None: every file
    listed now) into local_folder.

    Only the names given or listed: a file added meanwhile is not copied,
    and a name that would land outside local_folder (an object key holding
    ``..`` or an absolute part) raises ValueError before anything is copied.
    """
    fs, path = filesystem(folder)
    base = os.path.realpath(local_folder)
    copies = []
    for name in sorted(files_under(folder)) if names is None else names:
        target = os.path.realpath(os.path.join(base, name))
        if os.path.isabs(name) or not target.startswith(base + os.sep):
            raise ValueError(f"object key {name!r} would be copied outside {local_folder}")
        copies.append((join(path, name), target))
    with _boundary("copying", folder):
        for source, target in copies:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fs.get_file(source, target)


def modified_at(info: dict[str, Any]) -> float:
    """When the store last wrote an entry (seconds since the epoch, by the store's clock), from its listing."""
    stamp = info.get("LastModified") if info.get("LastModified") is not None else info.get("mtime")
    if stamp is None:
        raise RootUnreachable(f"the store gave no modification time for {info.get('name')}")
    return stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp)


def modification_times(folder: str) -> dict[str, float]:
    """Base name -> when the store last wrote it, for each file directly in folder; {} for a missing folder."""
    fs, path = filesystem(folder)
    try:
        with _boundary("listing", folder):
            found = fs.ls(path, detail=True)
    except FileNotFoundError:
        return {}
    return {posixpath.basename(info["name"].rstrip("/")): modified_at(info)
            for info in found if info.get("type") != "directory"}


def last_written(folder: str) -> float | None:
    """When the store last wrote anything under folder (the folder itself too, where the store has folders);
    None when there is nothing there."""
    fs, path = filesystem(folder)
    with _boundary("listing", folder):
        found = list(fs.find(path, withdirs=True, detail=True).values())
        if is_local(folder) and fs.exists(path):
            found.append(fs.info(path))
    times = [modified_at(info) for info in found
             if info.get("LastModified") is not None or info.get("mtime") is not None]
    return max(times, default=None)


def store_now(folder: str) -> float:
    """The store's clock now: the modification time of a probe written into folder and removed at once.

    Ages of things in the root (serving markers, a lease, staging folders) are
    judged against this, never against this machine's clock: a replica or a
    trainer whose clock is off then neither looks dead nor keeps a stale
    entry alive. The probe's dot-name keeps every reader of folder blind to it.
    """
    probe = join(folder, f".clock-{uuid.uuid4().hex[:12]}")
    fs, path = filesystem(probe)
    with _boundary("reading the store's clock in", folder):
        if is_local(probe):
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
        fs.pipe_file(path, b"")
        try:
            return modified_at(fs.info(path))
        finally:
            fs.rm_file(path)


def write_serving_marker(root: str, replica: str, version: int) -> None:
    """Tells the publisher's retention which version this replica serves.

    Its freshness is the file's modification time by the store's clock (see
    serving_replicas); ``updated`` is only this replica's view, for people.
    """
    record = json.dumps({"version": version, "updated": time.time()}).encode()
    write_bytes(join(root, SERVING_DIR, f"{replica}.json"), record)


def remove_serving_marker(root: str, replica: str) -> None:
    """A replica that stops says so at once, instead of being listed as serving until its marker ages out."""
    remove_file(join(root, SERVING_DIR, f"{replica}.json"))


def serving_replicas(root: str, ttl: float = SERVING_MARKER_TTL_SECONDS) -> dict[str, int]:
    """The version each live recommender serves, by replica id (markers rewritten within ttl).

    A marker is live when the store last wrote it within ttl of the store's
    own clock now (``store_now``): the replica's clock and the trainer's play
    no part. A marker's file name is its replica's id, so the trainer can say
    who serves what (ListVersions) without asking any recommender. Raises
    RootUnreachable when the markers cannot be read: "nobody serves anything"
    would let retention delete what replicas serve.
    """
    folder = join(root, SERVING_DIR)
    written = {name: when for name, when in modification_times(folder).items()
               if name.endswith(".json") and not name.startswith(".")}
    now = store_now(folder) if written else 0.0
    replicas: dict[str, int] = {}
    for name, when in sorted(written.items()):
        if now - when > ttl:
            continue
        try:
            marker = json.loads(read_bytes(join(folder, name)))
            replicas[name[: -len(".json")]] = int(marker["version"])
        except FileNotFoundError:  # removed since the listing: the replica stopped
            continue
        except (ValueError, KeyError, TypeError):  # not a marker (ValueError covers bad JSON and UTF-8)
            continue
    return replicas


def versions_in_use(root: str, ttl: float = SERVING_MARKER_TTL_SECONDS) -> set[int]:
    """Versions some live recommender serves (see serving_replicas); raises when unreadable."""
    return set(serving_replicas(root, ttl).values())


def write_pin(root: str, version: int | None, keys: signing.PublishingKeys | None = None) -> None:
    """Pins every replica watching root to version (None unpins).

    The pin is one small file in the root, written whole, so it survives
    restarts of every process and each replica sees it on its next poll.
    With publishing keys it is a signed document (signing.pin_document) whose
    sequence grows past the previous signed pin's, and an unpin is a signed
    ``version: null`` rather than a deletion, so an older signed pin put back
    is recognisably older.
    """
    location = join(root, PIN_FILE)
    if keys is not None:
        try:
            signed = read_signed_pin(root, keys)
        except PinDamaged:  # not one of ours: replaced by one that is
            signed = None
        previous = 0 if signed is None else signed.sequence
        write_bytes(location, signing.pin_document(keys, None if version is None else int(version), previous))
        return
    if version is None:
        remove_file(location)  # False: nothing was pinned
        return
    write_bytes(location, json.dumps({"version": int(version), "updated": time.time()}).encode())


class PinDamaged(ValueError):
    """The pin file exists but does not name a version, or (with publishing keys) is not signed by one of
    them; writing a new pin (or unpinning) repairs it."""


def read_signed_pin(root: str, keys: signing.PublishingKeys) -> signing.SignedPin | None:
    """The verified pin with its sequence, or None when there is no pin file.

    Raises PinDamaged when it is not signed by one of ``keys`` or is not a
    pin, RootUnreachable when the store cannot answer.
    """
    location = join(root, PIN_FILE)
    try:
        raw = read_bytes(location)
    except FileNotFoundError:
        return None
    try:
        return signing.read_pin_document(keys, raw, "the pin")
    except ValueError as exc:  # SignatureError, or not a pin
        raise PinDamaged(f"{location}: {exc}") from None


def read_pin(root: str, keys: signing.PublishingKeys | None = None) -> int | None:
    """The pinned version, or None when nothing is pinned (no pin file, or a signed unpin).

    Raises when the pin cannot be read: PinDamaged for a file that does not
    name a positive version or, with ``keys``, is not signed by one of them;
    RootUnreachable when the store cannot answer. Either way a watcher keeps
    what it serves rather than guess. Without keys a signed pin reads as
    written, unverified.
    """
    if keys is not None:
        signed = read_signed_pin(root, keys)
        return None if signed is None else signed.version
    location = join(root, PIN_FILE)
    try:
        raw = read_bytes(location)
    except FileNotFoundError:
        return None
    try:
        document = json.loads(raw)
        version = document["version"]
        if version is None and signing.SIGNATURE_FIELD in document:  # a signed unpin
            return None
        if isinstance(version, bool) or not isinstance(version, int):
            raise TypeError(f"the version is {version!r}, not a whole number")
    except (ValueError, KeyError, TypeError) as exc:  # ValueError covers bad JSON and bad UTF-8
        raise PinDamaged(f"{location} does not name a version ({type(exc).__name__}: {exc})") from None
    if version < 1:
        raise PinDamaged(f"{location} names version {version}; versions are positive")
    return version
