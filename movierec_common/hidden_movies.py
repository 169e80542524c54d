"""Operators' hidden movies: rules every replica applies to every version, kept in the model root.

A licence ends or a takedown arrives: the movie must leave every answer of
every replica, whatever version it serves, now and after restarts. So the
rules live in the model root beside the pin, as one small document,
``<root>/.hidden.json``, which each recommender reads at every poll::

    {"movie_ids": [50, 181], "sequence": 1714564800123, "updated": 1714564800.12,
     "signature": {...}}   # only with a publishing key

**Atomicity rules.**

* The document is written whole (``model_root.write_bytes``: on a folder,
  written beside it and renamed over it; on an object store, one PUT), so a
  reader sees the old rules or the new, never half.
* Only the trainer writes it, by read-modify-write (hide = union, unhide =
  difference) under one in-process lock, so two calls into one trainer never
  lose each other's change. One trainer per root is the root lease's rule
  (``root_lease``); a trainer that lost its lease writes nothing
  (``root_lease.confirm`` before each write raises ``RootLeaseLost``). Two
  writers that bypass the lease (a hand edit racing a call) are last writer
  wins: the other's change is lost, and shows as missing in ListHiddenMovies.
* ``sequence`` grows with every change: milliseconds since the epoch, or one
  more than the previous document's (or this process's last) when the clock
  reads earlier or has not moved, as the pin's (``signing.next_sequence``).
  It is not a count of changes; it orders documents even across a removed or
  damaged file, so rules written after a repair are newer than any a replica
  applied before it. A call that changes nothing writes nothing.
* With publishing keys the document is signed (kind :data:`HIDDEN_KIND`), and a
  recommender holding them refuses unsigned or wrongly signed rules and
  signed rules older (by sequence) than rules it applied
  (``recommender_service.source``). A trainer with keys refuses to build on a
  document it cannot verify (:class:`HiddenRulesDamaged`), since a union with
  unknown rules would drop or sign what it cannot vouch for.

**Errors.** A store that cannot answer raises ``model_root.RootUnreachable``
(the root's one boundary error); a document that is not rules, or not signed
by one of the keys, raises :class:`HiddenRulesDamaged`; a missing file is no
rules (:data:`NO_HIDDEN_RULES`).

**Bounds.** At most :data:`MAX_IDS_PER_CALL` ids per call and
:data:`MAX_HIDDEN_MOVIES` hidden in all: at that bound the document is about
9 MB (14 MB signed) and reading it costs about 0.2 s, paid only when it
changes (:func:`stamp` tells a reader whether it did).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from movierec_common import model_root, root_lease, signing
from movierec_common.logs import event

log = logging.getLogger(__name__)

HIDDEN_FILE = ".hidden.json"
HIDDEN_KIND = "hidden"  # what the signature says it signs: never a pin or a version
MAX_IDS_PER_CALL = 10_000
MAX_HIDDEN_MOVIES = 1_000_000

_WRITE_LOCK = threading.Lock()  # one read-modify-write at a time in this process


class HiddenRulesDamaged(ValueError):
    """The hidden-movie document exists but is not rules, or (with publishing keys) is not signed by one of
    them. Removing it and hiding the movies again repairs it."""


class HiddenRequestInvalid(ValueError):
    """A hide or unhide with no ids, or more than MAX_IDS_PER_CALL; the message has the numbers."""


class HiddenListFull(ValueError):
    """Hiding these ids would hide more than MAX_HIDDEN_MOVIES movies; the message has the numbers."""


def _frozen(ids: np.ndarray) -> np.ndarray:
    ids.setflags(write=False)
    return ids


@dataclass(frozen=True, eq=False)
class HiddenRules:
    """The hidden movies (int64 ids, ascending, distinct, read-only) and the sequence of their document.

    Immutable and shared: a replica hands the same value (and the same
    array) to every request until the rules change, so per-rules work can be
    kept by the array's identity. Build it with :meth:`of`.
    """

    movie_ids: np.ndarray
    sequence: int  # 0: no rules were ever written

    @classmethod
    def of(cls, movie_ids: Sequence[int] | np.ndarray, sequence: int) -> HiddenRules:
        ids = np.asarray(movie_ids, dtype=np.int64).reshape(-1)
        if ids.size > 1 and not bool(np.all(ids[1:] > ids[:-1])):  # the writer's order is already right
            ids = np.unique(ids)
        return cls(_frozen(ids.copy()), int(sequence))

    def same_as(self, other: HiddenRules) -> bool:
        return self is other or (self.sequence == other.sequence and np.array_equal(self.movie_ids, other.movie_ids))


NO_HIDDEN_RULES = HiddenRules(_frozen(np.zeros(0, dtype=np.int64)), 0)


def location(root: str) -> str:
    return model_root.join(root, HIDDEN_FILE)


# --------------------------------------------------------------------------- the document


def document(rules: HiddenRules, keys: signing.PublishingKeys | None = None) -> bytes:
    """The bytes of ``rules``: signed with the first of ``keys`` when given, plain JSON otherwise."""
    fields = {"movie_ids": rules.movie_ids.tolist(), "sequence": rules.sequence, "updated": time.time()}
    if keys is not None:
        return keys.sign(HIDDEN_KIND, fields)
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def parse(raw: bytes, keys: signing.PublishingKeys | None, what: str) -> HiddenRules:
    """The rules in ``raw``, verified when ``keys`` are given; HiddenRulesDamaged saying why otherwise."""
    try:
        fields = signing.read_document(keys, HIDDEN_KIND, raw, what)  # SignatureError is a ValueError
    except ValueError as exc:
        raise HiddenRulesDamaged(str(exc)) from None
    ids, sequence = fields.get("movie_ids"), fields.get("sequence")
    if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 1:
        raise HiddenRulesDamaged(f"{what} has no sequence number (a whole number from 1)")
    if not isinstance(ids, list) or not all(type(movie) is int for movie in ids):
        raise HiddenRulesDamaged(f"{what} holds no list of whole-number movie ids")
    if len(ids) > MAX_HIDDEN_MOVIES:
        raise HiddenRulesDamaged(f"{what} holds {len(ids):,} movie ids; at most {MAX_HIDDEN_MOVIES:,} can be hidden")
    try:
        return HiddenRules.of(ids, sequence)
    except OverflowError:
        raise HiddenRulesDamaged(f"{what} holds a movie id beyond 64 bits") from None


# --------------------------------------------------------------------------- reading


def read_rules(root: str, keys: signing.PublishingKeys | None = None) -> HiddenRules:
    """The rules in root; NO_HIDDEN_RULES when it has none. Raises HiddenRulesDamaged, RootUnreachable."""
    where = location(root)
    try:
        raw = model_root.read_bytes(where)
    except FileNotFoundError:
        return NO_HIDDEN_RULES
    return parse(raw, keys, f"the hidden movies ({where})")


def stamp(root: str) -> str | None:
    """Changes whenever the document is rewritten (its size and the store's tag or time); None when it is
    absent. One stat or HEAD, so a replica reads the document itself only when this changed."""
    where = location(root)
    fs, path = model_root.filesystem(where)
    try:
        with model_root.store_boundary("checking", where):
            info = fs.info(path)
    except FileNotFoundError:
        return None
    tag = info.get("ETag") or f"{info.get('mtime')}:{info.get('ino')}:{info.get('created')}"
    return f"{info.get('size')}:{tag}"


# --------------------------------------------------------------------------- changing (the trainer)


def hide(root: str, movie_ids: Sequence[int], keys: signing.PublishingKeys | None = None,
         before_write: Callable[[], None] | None = None) -> HiddenRules:
    """Adds movie_ids to root's hidden movies; returns the rules now in force. ``before_write`` runs
    under the lock just before a change is written, as the last moment to refuse: if it raises, nothing is.

    Raises HiddenRequestInvalid, HiddenListFull, HiddenRulesDamaged,
    RootUnreachable, root_lease.RootLeaseLost.
    """
    return _change(root, movie_ids, keys, "hide", np.union1d, before_write)


def unhide(root: str, movie_ids: Sequence[int], keys: signing.PublishingKeys | None = None,
           before_write: Callable[[], None] | None = None) -> HiddenRules:
    """Takes movie_ids off root's hidden movies (ids not on it are ignored); returns the rules now in force.
    Raises as :func:`hide` does, except HiddenListFull."""
    return _change(root, movie_ids, keys, "unhide", np.setdiff1d, before_write)


def _change(root: str, movie_ids: Sequence[int], keys: signing.PublishingKeys | None, verb: str,
            combine: Callable[[np.ndarray, np.ndarray], np.ndarray],
            before_write: Callable[[], None] | None) -> HiddenRules:
    if not len(movie_ids):
        raise HiddenRequestInvalid(f"no movie ids to {verb}: give at least one")
    if len(movie_ids) > MAX_IDS_PER_CALL:
        raise HiddenRequestInvalid(f"{len(movie_ids):,} movie ids in one call; at most {MAX_IDS_PER_CALL:,} "
                                   f"are accepted: {verb} them in several calls")
    asked = np.asarray(movie_ids, dtype=np.int64).reshape(-1)
    with _WRITE_LOCK:
        current = read_rules(root, keys)
        ids = combine(current.movie_ids, asked).astype(np.int64, copy=False)
        if np.array_equal(ids, current.movie_ids):
            return current  # nothing changes, nothing is written
        if ids.size > MAX_HIDDEN_MOVIES:
            raise HiddenListFull(f"hiding these {asked.size:,} ids would hide {ids.size:,} movies; at most "
                                 f"{MAX_HIDDEN_MOVIES:,} can be hidden ({current.movie_ids.size:,} are now): "
                                 "unhide some first")
        rules = HiddenRules.of(ids, signing.next_sequence(current.sequence))
        root_lease.confirm(root)  # still this trainer's root: nobody else is writing the rules
        if before_write is not None:
            before_write()  # the last moment to refuse (a caller's passed deadline): raising writes nothing
        model_root.write_bytes(location(root), document(rules, keys))
    event(log, "movies hidden" if verb == "hide" else "movies unhidden", asked=int(asked.size),
          hidden_movies=int(rules.movie_ids.size), sequence=rules.sequence, previous_sequence=current.sequence,
          signed=keys is not None)
    return rules
