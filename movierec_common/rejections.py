"""What replicas refused to serve, recorded in the model root beside their serving markers.

Retention keeps the newest N *valid* versions, and a version some replica
rejected is not valid (the trainer's own check can pass what a replica
refuses: another library, a publishing key the trainer did not sign with, a
file altered after publishing). The recommender is the only one who knows, so
each replica writes what it rejected to
``.serving/.rejected/<replica>.json`` (a dot-name: the serving markers'
readers skip it), one file per replica so that no two writers share one::

    {"versions": {"7": {"fingerprint": "…", "reason": "…", "at": 1764000000.0}}}

A rejection holds for the folder as it was (its ``model_root.folder_fingerprint``):
a folder repaired by hand changes its fingerprint and the record no longer
applies, which is the same rule the serving policy uses.
"""

from __future__ import annotations

import json
import time

from movierec_common.model_root import SERVING_DIR, join, list_names, read_bytes, write_bytes

REJECTED_DIR = ".rejected"


def _record_path(root: str, replica: str) -> str:
    return join(root, SERVING_DIR, REJECTED_DIR, f"{replica}.json")


def _read_record(location: str) -> dict[str, dict[str, object]]:
    """One replica's record; an absent or damaged one counts as empty (it only ever adds protection)."""
    try:
        versions = json.loads(read_bytes(location))["versions"]
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError):  # ValueError covers bad JSON and UTF-8
        return {}
    return versions if isinstance(versions, dict) else {}


def record_rejection(root: str, replica: str, version: int, fingerprint: str, reason: str,
                     *, still_listed: set[int] | None = None) -> None:
    """Adds ``version`` (as its folder's ``fingerprint`` stood) to this replica's record.

    ``still_listed``, when given, drops entries for versions no longer in the
    root, so a record does not grow for ever. Raises RootUnreachable when it
    cannot be written; the caller decides whether that matters.
    """
    location = _record_path(root, replica)
    versions = _read_record(location)
    if still_listed is not None:
        versions = {name: entry for name, entry in versions.items()
                    if name.isascii() and name.isdigit() and int(name) in still_listed}
    versions[str(version)] = {"fingerprint": fingerprint, "reason": reason[:500], "at": time.time()}
    write_bytes(location, json.dumps({"versions": versions}, sort_keys=True).encode())


def rejected_fingerprints(root: str) -> dict[int, set[str]]:
    """Version -> the folder fingerprints some replica rejected it at; raises RootUnreachable when unreadable."""
    folder = join(root, SERVING_DIR, REJECTED_DIR)
    found: dict[int, set[str]] = {}
    for name in list_names(folder):
        if not name.endswith(".json") or name.startswith("."):
            continue
        for version, entry in _read_record(join(folder, name)).items():
            if version.isascii() and version.isdigit() and isinstance(entry, dict):
                found.setdefault(int(version), set()).add(str(entry.get("fingerprint", "")))
    return found
