"""The source: what the model root offers, read once per poll into an immutable
:class:`RootSnapshot` (TF Serving's source, for one model root).

A snapshot holds the versions listed and the pin as read, or why either could
not be read: storage errors arrive as ``model_root.RootUnreachable`` (the one
error at the root's boundary) and are kept as facts in the snapshot rather than
turned into "nothing there", so the serving policy sees the difference.

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

from movierec_common import signing
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
class RootSnapshot:
    """What the model root offers at one poll."""

    versions: tuple[int, ...] = ()  # ascending; empty when the root is empty or could not be listed
    unreachable: str = ""           # why the root could not be listed; "" when it was
    pin: PinReading = field(default_factory=PinReading)
    # Operators' hidden movies will be read here, beside the pin and at the same poll, so every replica
    # applies the same rules from its next poll on (a later issue).
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
    """

    def __init__(self, model_root: str, keys: signing.PublishingKeys | None = None):
        self.model_root = model_root
        self._keys = keys
        self._pin_sequence = 0  # the highest sequence of a signed pin accepted so far

    def snapshot(self, *, read_pin: bool = True) -> RootSnapshot:
        """The versions and, with ``read_pin``, the pin. A replica held by its own ``--version`` does not
        consult the root's pin, so it passes ``read_pin=False`` and the snapshot shows nothing pinned."""
        try:
            versions, unreachable = tuple(list_versions(self.model_root)), ""
        except RootUnreachable as exc:
            versions, unreachable = (), str(exc)
        return RootSnapshot(versions=versions, unreachable=unreachable,
                            pin=self._read_pin() if read_pin else PinReading())

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

    def path(self, version: int) -> str:
        return version_dir(self.model_root, version)

    def fingerprint(self, version: int) -> str:
        """The version folder's fingerprint (model_root.folder_fingerprint); raises RootUnreachable."""
        return folder_fingerprint(self.path(version))
