"""Which version a replica serves: one pure function over snapshots, :func:`decide`.

The rule (TF Serving's availability-preserving policy, and stricter):

* Held to a version (this replica's ``--version``, else the model root's pin,
  which every replica reads at each poll, so an operator's rollback reaches
  all of them within one poll and a load), a replica serves that version,
  older or newer than the current one.
* A pin that cannot be honoured (a missing or rejected version) changes
  nothing: the current version keeps serving and the pin problem says why. A
  pin that cannot be read changes nothing either: neither the newest nor
  anything else, no guessing.
* Otherwise the newest valid version, never going back to an older one than
  the current.
* A version rejected as it is (the same folder fingerprint) is passed over
  until its folder changes, so a bad version costs one attempt, not one per
  poll.

Why pure: this rule is what is worth testing exhaustively (in tables, without
I/O: tests/unit/test_serving_policy.py). Hidden movies are not part of it:
they leave nothing to choose (readable rules apply, unreadable ones keep the
last), so the registry applies them itself. :func:`decide` reads a snapshot of the root
and a view of the replica and returns one step; the manager
(``recommender_service.registry``) does the I/O the step asks for and asks
again with what it learnt, until the step is :data:`SETTLE`:

* :class:`Inspect`: take the version folder's fingerprint (one listing on an
  object store: taken only for a version the rule may choose);
* :class:`Load`: load the version; when it is rejected the manager records
  that and asks again, so the next older candidate gets its turn in the same
  poll; when the root is unreachable it stops until the next poll.

Each decision also carries the pin problem as it now stands (None: as it was).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from recommender_service.source import RootSnapshot


@dataclass(frozen=True)
class Rejection:
    """A version this replica refused, with its folder's fingerprint at the time and why."""

    fingerprint: str
    reason: str


@dataclass(frozen=True)
class ReplicaView:
    """What the policy needs to know about this replica."""

    version_flag: int | None = None  # its --version: wins over the model root's pin
    serving: int | None = None       # the version it serves now
    rejected: Mapping[int, Rejection] = field(default_factory=dict)


@dataclass(frozen=True)
class Inspect:
    """Fingerprint this version's folder, then decide again."""

    version: int


@dataclass(frozen=True)
class Load:
    """Load this version, whose folder had this fingerprint; then decide again, unless the root was unreachable."""

    version: int
    fingerprint: str


@dataclass(frozen=True)
class Settle:
    """Nothing (more) to load at this poll."""


SETTLE = Settle()
Step = Inspect | Load | Settle


@dataclass(frozen=True)
class Decision:
    step: Step
    # Why the served version is not the pinned one ("": it is, or nothing is pinned); None: as it was.
    pin_problem: str | None


def decide(root: RootSnapshot, replica: ReplicaView) -> Decision:
    """The next step for this replica, and the pin problem as it now stands. No I/O, no clock."""
    if replica.version_flag is not None:  # this replica's own pin wins; the root's is not consulted
        return _follow_pin(replica.version_flag, root, replica)
    if not root.pin.readable:  # keep serving what is served; do not guess
        return Decision(SETTLE, f"the model root's pin cannot be read: {root.pin.problem}")
    if root.pin.version is not None:
        return _follow_pin(root.pin.version, root, replica)
    return _follow_newest(root, replica)


def _rejected_as_it_is(version: int, fingerprint: str, replica: ReplicaView) -> Rejection | None:
    rejection = replica.rejected.get(version)
    return rejection if rejection is not None and rejection.fingerprint == fingerprint else None


def _follow_pin(pinned: int, root: RootSnapshot, replica: ReplicaView) -> Decision:
    """The pinned version, whether older or newer than the current one; on any failure the current one keeps serving.

    The root being unreachable looks like an empty listing here, so a pinned
    version that is not served yet reads as "not in the model root" until the
    root answers again (serving is unaffected either way).
    """
    if replica.serving == pinned:
        return Decision(SETTLE, "")
    keeps = (f"version {replica.serving} keeps serving" if replica.serving is not None
             else "nothing is served until it can be")
    if pinned not in root.versions:
        return Decision(SETTLE, f"pinned version {pinned} is not in the model root; {keeps}")
    fingerprint = root.fingerprints.get(pinned)
    if fingerprint is None:
        return Decision(Inspect(pinned), None)
    rejection = _rejected_as_it_is(pinned, fingerprint, replica)
    if rejection is None:
        return Decision(Load(pinned, fingerprint), None)
    return Decision(SETTLE, f"pinned version {pinned} was rejected ({rejection.reason}); {keeps}")


def _follow_newest(root: RootSnapshot, replica: ReplicaView) -> Decision:
    """The newest version not rejected as it is; never an older one than the current."""
    for version in reversed(root.versions):
        if replica.serving is not None and version <= replica.serving:
            break
        fingerprint = root.fingerprints.get(version)
        if fingerprint is None:
            return Decision(Inspect(version), "")
        if _rejected_as_it_is(version, fingerprint, replica) is None:
            return Decision(Load(version, fingerprint), "")
    return Decision(SETTLE, "")
