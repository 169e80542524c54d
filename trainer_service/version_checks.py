"""Which versions are valid: the trainer's own check before publishing, and the judgement retention relies on.

Retention keeps the newest N *valid* versions (``publisher.apply_retention``),
so that a bad newest version can never leave nothing servable. Valid means
all of:

1. **complete**: ``metadata.json`` parses;
2. **verified against its manifest**: every file it lists is there with its
   size and sha256 (``artifact.verify_manifest``);
3. **passed the trainer's check before publishing** (:func:`check_before_publishing`:
   the manifest, the SavedModel loaded, one query through ``serving_default``),
   recorded as ``.checks/<sha256 of metadata.json>``. The record names the
   content, not the number, so a byte copy of a checked version is as valid
   and a folder whose metadata.json was replaced is not;
4. **not rejected by any replica** as its folder now stands
   (``movierec_common.rejections``).

Hashing every byte of a version is what (2) costs; on an object store that is
a download. It is done once per version and folder fingerprint in a trainer
process (:data:`_VERIFIED`), and only for versions retention must judge.
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np

from movierec_common.artifact import (
    METADATA_FILE,
    SERVING_SIGNATURE,
    ArtifactError,
    VersionMetadata,
    load,
    verify_manifest,
)
from movierec_common.model_root import (
    folder_fingerprint,
    join,
    list_names,
    read_bytes,
    remove_file,
    version_dir,
    write_bytes,
)
from movierec_common.rejections import rejected_fingerprints
from movierec_common.tfenv import tensorflow

CHECKS_DIR = ".checks"

# (root, version, folder fingerprint) -> whether the folder verified against its manifest.
_VERIFIED: dict[tuple[str, int, str], bool] = {}
_VERIFIED_LOCK = threading.Lock()


def metadata_digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def check_before_publishing(folder: str) -> str:
    """The trainer's own check of a version assembled in a local folder, before any reader can see it.

    The manifest must verify, the SavedModel must load as a movierec artifact
    (``artifact.load`` checks its arrays agree), and ``serving_default`` must
    answer a known and an unknown user with movies of its own catalogue.
    Returns the sha256 of its metadata.json, which the check record names.
    Raises ArtifactError saying what is wrong.
    """
    raw = read_bytes(join(folder, METADATA_FILE))
    metadata = VersionMetadata.from_text(raw)
    verify_manifest(folder, metadata.files)
    saved, module = load(folder)
    tf = tensorflow()
    users = [str(saved.user_ids[0])] if saved.num_users else []
    try:
        answer = module.signatures[SERVING_SIGNATURE](user_id=tf.constant([*users, "\x00unknown-user"]),
                                                      k=tf.constant(min(5, saved.num_items), tf.int32))
        movies, scores = answer["movie_ids"].numpy(), answer["scores"].numpy()
    except Exception as exc:  # TensorFlow raises many types for a graph that cannot run
        raise ArtifactError(f"serving_default does not answer: {type(exc).__name__}: {exc}") from exc
    answered = movies[np.isfinite(scores)]
    if movies.shape[0] != len(users) + 1 or not np.isin(answered, saved.movie_ids).all():
        raise ArtifactError(f"serving_default answered outside its catalogue (answer shape {movies.shape})")
    return metadata_digest(raw)


def record_check(root: str, digest: str) -> None:
    """Notes in the root that the version whose metadata.json has this digest passed the trainer's check."""
    write_bytes(join(root, CHECKS_DIR, f"{digest}.json"), b"{}")


def checked_digests(root: str) -> set[str]:
    return {name[: -len(".json")] for name in list_names(join(root, CHECKS_DIR)) if name.endswith(".json")}


def _verified(root: str, version: int, folder: str, fingerprint: str, metadata: VersionMetadata) -> bool:
    key = (root, version, fingerprint)
    with _VERIFIED_LOCK:
        known = _VERIFIED.get(key)
    if known is None:
        try:
            verify_manifest(folder, metadata.files)
            known = True
        except ArtifactError:
            known = False
        with _VERIFIED_LOCK:
            _VERIFIED[key] = known
    return known


def newest_valid(root: str, versions: list[int], wanted: int) -> list[int]:
    """Up to ``wanted`` valid versions of ``versions`` (see the module docstring), newest first.

    Stops as soon as it has found them, so older versions are not hashed.
    Raises RootUnreachable when the root cannot be read: validity unknown.
    """
    checked = checked_digests(root)
    rejected = rejected_fingerprints(root)
    found: list[int] = []
    for version in sorted(versions, reverse=True):
        if len(found) >= wanted:
            break
        folder = version_dir(root, version)
        try:
            raw = read_bytes(join(folder, METADATA_FILE))
            metadata = VersionMetadata.from_text(raw)
        except (FileNotFoundError, ArtifactError):
            continue
        if metadata_digest(raw) not in checked:
            continue
        fingerprint = folder_fingerprint(folder)
        if fingerprint in rejected.get(version, set()):
            continue
        if _verified(root, version, folder, fingerprint, metadata):
            found.append(version)
    return found


def forget_checks_except(root: str, versions: list[int]) -> list[str]:
    """Removes check records that name no version left in the root (after retention deleted some)."""
    live = set()
    for version in versions:
        try:
            live.add(metadata_digest(read_bytes(join(version_dir(root, version), METADATA_FILE))))
        except FileNotFoundError:
            continue
    stale = sorted(checked_digests(root) - live)
    for digest in stale:
        remove_file(join(root, CHECKS_DIR, f"{digest}.json"))
    return stale
