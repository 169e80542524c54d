"""Publishing keys: proof of who wrote what the model root holds.

A version is code (a SavedModel's graph runs in the recommender's loader), and
the manifest in ``metadata.json`` proves only that a version is intact, not who
wrote it. With a publishing key the trainer signs what it puts in the root and
every recommender holding the key refuses what is not signed by it:

* a version: ``signature.json`` beside ``metadata.json`` signs the exact bytes
  of ``metadata.json`` (whose manifest lists every other file with its size
  and sha256, so it binds them all) together with the version's number, so a
  signed version 3 copied to folder 9 is refused;
* the pin (``.pin.json``, see model_root.write_pin): its version and a
  sequence number that only grows, so a replica never follows an older signed
  pin than one it already followed (a replayed pin), and an unpin is a signed
  document too (``version: null``) rather than a deletion;
* any other small document an operator writes into the root (the hidden
  movies, ``movierec_common.hidden_movies``): :meth:`PublishingKeys.sign` /
  :func:`read_document`.

HMAC-SHA256 with a shared secret: the trainer and the recommenders hold the
key, whoever may only write the root does not. A key file holds one key per
line (``#`` comments, at least :data:`MIN_KEY_CHARS` characters each); the
trainer signs with the first, a recommender accepts any, so a new key is put
first on the trainer and added to every recommender before the old one is
dropped. Keys come from a file, never a flag value (the process list shows
flags). This module works on bytes only; model_root and the loader do the I/O.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_KEY_CHARS = 32
SIGNATURE_FIELD = "signature"
ALGORITHM = "HMAC-SHA256"
# What a signature says it signs; the verifier supplies the kind it expects, so a
# signed pin can never pass as a signed version or as hidden-movie rules.
VERSION_KIND = "version"
PIN_KIND = "pin"
_DOMAIN = b"movierec signed document v1\n"


class SigningConfigError(ValueError):
    """The key file cannot be used; the message says why."""


class SignatureError(ValueError):
    """A document is unsigned, or not signed by any key held here; the message says which and why."""


def key_id(key: bytes) -> str:
    """A short public name for a key (a hash of it), so logs and signatures can say which key signed."""
    return hashlib.sha256(b"movierec key id\n" + key).hexdigest()[:16]


def canonical(fields: Mapping[str, Any]) -> bytes:
    """The one byte form of a document's fields that is signed: sorted keys, no spaces, ASCII, no NaN."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


@dataclass(frozen=True)
class PublishingKeys:
    """The keys of one key file: the first signs, every one is accepted."""

    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise SigningConfigError("a publishing key file must hold at least one key")

    @property
    def signing_key(self) -> bytes:
        return self.keys[0]

    def _mac(self, key: bytes, kind: str, fields: Mapping[str, Any]) -> str:
        return hmac.new(key, _DOMAIN + kind.encode() + b"\n" + canonical(fields), hashlib.sha256).hexdigest()

    def sign(self, kind: str, fields: Mapping[str, Any]) -> bytes:
        """``fields`` as a JSON document with a ``signature`` field over them (the signed-document format).

        The fields stay at the top level, readable by code that knows nothing of signatures.
        """
        if SIGNATURE_FIELD in fields:
            raise ValueError(f"a signed document's fields cannot include {SIGNATURE_FIELD!r}")
        signature = {"algorithm": ALGORITHM, "kind": kind, "key_id": key_id(self.signing_key),
                     "mac": self._mac(self.signing_key, kind, fields)}
        return json.dumps({**fields, SIGNATURE_FIELD: signature}, indent=2, sort_keys=True).encode()

    def verify(self, kind: str, document: Mapping[str, Any], what: str) -> dict[str, Any]:
        """The document's fields if its signature is one of these keys' over them as a ``kind``.

        Raises SignatureError naming ``what`` and the reason. Every key is
        tried, each compared in constant time.
        """
        fields = {name: value for name, value in document.items() if name != SIGNATURE_FIELD}
        signature = document.get(SIGNATURE_FIELD)
        if not isinstance(signature, dict) or not isinstance(signature.get("mac"), str):
            raise SignatureError(f"{what} is not signed by a known publishing key (it carries no signature)")
        if signature.get("kind") != kind:
            raise SignatureError(f"{what} is not signed by a known publishing key (its signature is for a "
                                 f"{str(signature.get('kind'))[:40]!r}, not a {kind!r})")
        try:
            expected = [self._mac(key, kind, fields) for key in self.keys]
        except ValueError as exc:  # NaN or infinity in the fields: nothing we sign
            raise SignatureError(f"{what} is not signed by a known publishing key ({exc})") from None
        offered = signature["mac"].encode()
        matches = [hmac.compare_digest(offered, mac.encode()) for mac in expected]
        if not any(matches):
            raise SignatureError(f"{what} is not signed by a known publishing key (signed by key id "
                                 f"{str(signature.get('key_id'))[:16]!r}, which signs nothing this replica "
                                 f"accepts, or altered since it was signed)")
        return fields


def parse_document(raw: bytes, what: str) -> dict[str, Any]:
    """A signed-document file's JSON object (unverified); ValueError when it is not one."""
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ValueError(f"{what} is not a JSON object")
    return document


def read_document(keys: PublishingKeys | None, kind: str, raw: bytes, what: str) -> dict[str, Any]:
    """A document's fields: verified when ``keys`` are given (SignatureError), as written otherwise.

    The helper for any small signed file in the root (the pin, the hidden
    movies): ValueError when the bytes are not a JSON object.
    """
    document = parse_document(raw, what)
    if keys is None:
        return {name: value for name, value in document.items() if name != SIGNATURE_FIELD}
    return keys.verify(kind, document, what)


# --------------------------------------------------------------------------- versions


def version_signature(keys: PublishingKeys, version: int, metadata: bytes) -> bytes:
    """``signature.json`` for version ``version`` whose ``metadata.json`` is exactly ``metadata``."""
    return keys.sign(VERSION_KIND, {"version": int(version), "metadata_sha256": hashlib.sha256(metadata).hexdigest()})


def check_version_signature(keys: PublishingKeys, version: int, metadata: bytes, signature: bytes | None) -> str:
    """The signed sha256 of ``metadata.json``; raises SignatureError unless ``signature`` (the bytes of
    ``signature.json``, None when absent) signs exactly these bytes as this version."""
    what = f"version {version}"
    if signature is None:
        raise SignatureError(f"{what} is not signed by a known publishing key (it has no signature.json)")
    try:
        fields = keys.verify(VERSION_KIND, parse_document(signature, "signature.json"), what)
    except ValueError as exc:
        if isinstance(exc, SignatureError):
            raise
        raise SignatureError(f"{what} is not signed by a known publishing key ({exc})") from None
    if fields.get("version") != version:
        raise SignatureError(f"{what} is not signed by a known publishing key as version {version}: its signature "
                             f"is for version {str(fields.get('version'))[:20]} (a signed version copied to "
                             "another number)")
    digest = hashlib.sha256(metadata).hexdigest()
    if fields.get("metadata_sha256") != digest:
        raise SignatureError(f"{what} is not signed by a known publishing key: its metadata.json is not the one "
                             "that was signed (altered or replaced)")
    return digest


# --------------------------------------------------------------------------- the pin


@dataclass(frozen=True)
class SignedPin:
    """A verified pin: the version (None: unpinned) and its sequence (only grows from one pin to the next)."""

    version: int | None
    sequence: int


_SEQUENCE_LOCK = threading.Lock()
_last_sequence = 0


def next_sequence(previous_sequence: int = 0) -> int:
    """A document sequence: milliseconds since the epoch, made to grow.

    One more than ``previous_sequence`` (the document being replaced) when the
    clock reads earlier, as on a trainer moved to a machine whose clock is
    behind; and one more than the last sequence this process handed out, so two
    documents written in one millisecond still differ. The second matters when
    the previous document was removed: a replica that applied the removed one
    must see the next one as newer, though nothing on disk says how new.
    """
    global _last_sequence
    with _SEQUENCE_LOCK:
        _last_sequence = max(time.time_ns() // 1_000_000, previous_sequence + 1, _last_sequence + 1)
        return _last_sequence


def pin_document(keys: PublishingKeys, version: int | None, previous_sequence: int = 0) -> bytes:
    """The bytes of a signed pin (``version`` None: a signed unpin); its sequence from :func:`next_sequence`,
    so it grows from one pin to the next."""
    sequence = next_sequence(previous_sequence)
    return keys.sign(PIN_KIND, {"version": version, "sequence": sequence, "updated": time.time()})


def read_pin_document(keys: PublishingKeys, raw: bytes, what: str) -> SignedPin:
    """The verified pin; SignatureError when it is not signed by these keys, ValueError when malformed."""
    fields = read_document(keys, PIN_KIND, raw, what)
    version, sequence = fields.get("version"), fields.get("sequence")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise ValueError(f"{what} names {str(version)[:20]}, not a positive version")
    if isinstance(sequence, bool) or not isinstance(sequence, int):
        raise ValueError(f"{what} has no sequence number")
    return SignedPin(version=version, sequence=sequence)


# --------------------------------------------------------------------------- key files and the flag


def load_keys(path: str) -> PublishingKeys:
    """The keys in ``path``: one per line, ``#`` comments and blank lines skipped, each at least
    MIN_KEY_CHARS characters. Raises SigningConfigError saying what is wrong (never a key)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SigningConfigError(f"cannot read publishing key file {path}: {getattr(exc, 'strerror', exc)}") from exc
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise SigningConfigError(f"publishing key file {path} holds no key")
    short = [number for number, key in enumerate(keys, 1) if len(key) < MIN_KEY_CHARS]
    if short:
        raise SigningConfigError(f"publishing key file {path}: key {short[0]} is shorter than {MIN_KEY_CHARS} "
                                 "characters (e.g. `openssl rand -hex 32`)")
    return PublishingKeys(tuple(key.encode("utf-8") for key in keys))


def _keys_argument(path: str) -> PublishingKeys:
    try:
        return load_keys(path)
    except SigningConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--publish-key-file``; its value in the parsed arguments is the loaded PublishingKeys (or None)."""
    parser.add_argument("--publish-key-file", dest="publish_keys", type=_keys_argument, default=None, metavar="FILE",
                        help="publishing keys, one per line (# comments, 32+ characters): the trainer signs "
                             "versions and the pin with the first; a recommender serves only versions and "
                             "follows only pins signed by one of them (default: nothing signed or checked)")
