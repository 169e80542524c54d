"""The source: what the model root offers, read once per poll into an immutable
:class:`RootSnapshot` (TF Serving's source, for one model root).

A snapshot holds the versions listed, the pin and the operators' hidden movies
as read, or why each could not be read: storage errors arrive as
``model_root.RootUnreachable`` (the one error at the root's boundary) and are
kept as facts in the snapshot rather than turned into "nothing there", so the
serving policy sees the difference.

The hidden-movie document is read again only when its stamp (one stat or HEAD,
``hidden_movies.stamp``) changed since the last poll: at its bound it is
megabytes, and it changes rarely.

Folder fingerprints are taken one version at a time, when the policy asks for
one (:meth:`RootSource.fingerprint`, added with
:meth:`RootSnapshot.with_fingerprint`): on an object store each costs a
listing, and in the steady state (the newest version served) the policy needs
none, so fingerprinting every version at every poll would cost a listing per
version per second for nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from movierec_common import hidden_movies, signing
from movierec_common.hidden_movies import NO_HIDDEN_RULES, HiddenRules, HiddenRulesDamaged
from movierec_common.model_root import (
    PinDamaged,
    RootUnreachable,
    folder_fingerprint,
    list_versions,
    read_pin,
    read_signed_pin,
    version_dir,
)


@dataclass(frozen=True)
class PinReading:
    """The model root's pin as one poll read it: a version, none, or why it could not be read."""

    version: int | None = None  # None: nothing pinned (or the pin was not consulted, see RootSource.snapshot)
    problem: str = ""           # why it could not be read, as GetModelStatus says it; "" when it was read
    error: str = ""             # the error itself, for the log

    @property
    def readable(self) -> bool:
        return not self.problem


@dataclass(frozen=True)
class HiddenReading:
    """The operators' hidden movies as one poll read them: the rules, or why they could not be read."""

    rules: HiddenRules = NO_HIDDEN_RULES  # what the root holds (none: NO_HIDDEN_RULES); unused when not readable
    problem: str = ""                     # why they could not be read or followed; "" when they were read
    error: str = ""                       # the error itself, for the log

    @property
    def readable(self) -> bool:
        return not self.problem


@dataclass(frozen=True)
class RootSnapshot:
    """What the model root offers at one poll."""

    versions: tuple[int, ...] = ()  # ascending; empty when the root is empty or could not be listed
    unreachable: str = ""           # why the root could not be listed; "" when it was
    pin: PinReading = field(default_factory=PinReading)
    # Read beside the pin and at the same poll, so every replica applies the same rules from its next poll
    # on; read even by a replica held by its --version (the rules apply to every version).
    hidden: HiddenReading = field(default_factory=HiddenReading)
    fingerprints: Mapping[int, str] = field(default_factory=dict)  # of the versions looked at so far

    def with_fingerprint(self, version: int, fingerprint: str) -> RootSnapshot:
        return replace(self, fingerprints={**self.fingerprints, version: fingerprint})


class RootSource:
    """Reads one model root (a folder or an object-store URL).

    With publishing keys the pin must be signed by one of them, and a signed
    pin older (by its sequence) than one this source already accepted is not
    followed: whoever can write the root cannot roll the fleet back by putting
    an old signed pin back. A process starting afresh has no such memory;
    rotating the key retires every pin signed with the old one.

    The hidden movies likewise: with keys, unsigned rules and signed rules
    older than rules already accepted are not followed, and neither is their
    removal once signed rules were accepted (it would unhide a takedown);
    newer signed rules (UnhideMovies) are how an operator lifts them.
    """

    def __init__(self, model_root: str, keys: signing.PublishingKeys | None = None):
        self.model_root = model_root
        self._keys = keys
        self._pin_sequence = 0  # the highest sequence of a signed pin accepted so far
        self._hidden_sequence = 0  # the highest sequence of signed hidden rules accepted so far
        self._hidden_seen: tuple[str, HiddenReading] | None = None  # the document's stamp and its reading

    def snapshot(self, *, read_pin: bool = True) -> RootSnapshot:
        """The versions and, with ``read_pin``, the pin. A replica held by its own ``--version`` does not
        consult the root's pin, so it passes ``read_pin=False`` and the snapshot shows nothing pinned."""
        try:
            versions, unreachable = tuple(list_versions(self.model_root)), ""
        except RootUnreachable as exc:
            versions, unreachable = (), str(exc)
        return RootSnapshot(versions=versions, unreachable=unreachable,
                            pin=self._read_pin() if read_pin else PinReading(), hidden=self._read_hidden())

    def _read_pin(self) -> PinReading:
        try:
            if self._keys is None:
                return PinReading(version=read_pin(self.model_root))
            return self._read_signed_pin(self._keys)
        except PinDamaged as exc:
            return PinReading(problem=str(exc), error=str(exc))
        except RootUnreachable as exc:
            return PinReading(problem=f"{type(exc).__name__} reading the pin", error=str(exc))

    def _read_signed_pin(self, keys: signing.PublishingKeys) -> PinReading:
        pin = read_signed_pin(self.model_root, keys)  # PinDamaged and RootUnreachable: see _read_pin
        if pin is None:
            return PinReading()
        if pin.sequence < self._pin_sequence:
            problem = (f"the pin is older (sequence {pin.sequence}) than one this replica already followed "
                       f"(sequence {self._pin_sequence}): an old signed pin put back is not followed")
            return PinReading(problem=problem, error=problem)
        self._pin_sequence = pin.sequence
        return PinReading(version=pin.version)

    def _read_hidden(self) -> HiddenReading:
        try:
            stamp = hidden_movies.stamp(self.model_root)
            if stamp is not None and self._hidden_seen is not None and self._hidden_seen[0] == stamp:
                return self._hidden_seen[1]  # the same document as last poll: the same reading
            rules = NO_HIDDEN_RULES if stamp is None else hidden_movies.read_rules(self.model_root, self._keys)
        except HiddenRulesDamaged as exc:
            reading = HiddenReading(problem=str(exc), error=str(exc))
        except RootUnreachable as exc:
            return HiddenReading(problem=f"{type(exc).__name__} reading the hidden movies", error=str(exc))
        else:
            reading = self._followed(rules)
        if stamp is not None:
            self._hidden_seen = (stamp, reading)
        return reading

    def _followed(self, rules: HiddenRules) -> HiddenReading:
        """The reading of rules read intact: followed, unless (with keys) older than rules already followed."""
        if self._keys is None:
            return HiddenReading(rules=rules)
        if rules.sequence < self._hidden_sequence:
            applied = f"this replica applied signed rules (sequence {self._hidden_sequence})"
            if rules.sequence == 0:
                problem = (f"the hidden movies were removed from the model root, but {applied}: removing signed "
                           "rules does not lift them; newer signed rules (UnhideMovies) do")
            else:
                problem = (f"the hidden movies are older (sequence {rules.sequence}) than the rules {applied}: "
                           "old signed rules put back are not followed")
            return HiddenReading(problem=problem, error=problem)
        self._hidden_sequence = rules.sequence
        return HiddenReading(rules=rules)

    def path(self, version: int) -> str:
        return version_dir(self.model_root, version)

    def fingerprint(self, version: int) -> str:
        """The version folder's fingerprint (model_root.folder_fingerprint); raises RootUnreachable."""
        return folder_fingerprint(self.path(version))
