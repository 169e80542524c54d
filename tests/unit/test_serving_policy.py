"""The serving policy (recommender_service.policy.decide) in tables: what the model root offers, this
replica's --version, what it serves and what it rejected, against the step it takes and the pin problem
it reports. No I/O, no clock, no TensorFlow: the rule alone."""

from __future__ import annotations

import pytest

from recommender_service.policy import SETTLE, Decision, Inspect, Load, Rejection, ReplicaView, Step, decide
from recommender_service.source import PinReading, RootSnapshot

FP = {v: f"fp{v}" for v in range(1, 10)}  # each version folder's fingerprint as listed now
UNREADABLE = PinReading(problem="PinDamaged reading", error="bad json")


def root(*versions: int, pin: int | None = None, seen: tuple[int, ...] = (), unreadable_pin: bool = False,
         unreachable: str = "") -> RootSnapshot:
    """A snapshot offering ``versions``, with the fingerprints of ``seen`` already taken."""
    return RootSnapshot(versions=tuple(sorted(versions)), unreachable=unreachable,
                        pin=UNREADABLE if unreadable_pin else PinReading(version=pin),
                        fingerprints={v: FP[v] for v in seen})


def replica(serving: int | None = None, flag: int | None = None, rejected: dict[int, str] | None = None,
            ) -> ReplicaView:
    """``rejected``: version -> the fingerprint it was rejected with (reason "bad checksum")."""
    return ReplicaView(version_flag=flag, serving=serving,
                       rejected={v: Rejection(fp, "bad checksum") for v, fp in (rejected or {}).items()})


# --------------------------------------------------------------------------- nothing pinned: the newest valid


@pytest.mark.parametrize("snapshot, view, expected", [
    pytest.param(root(), replica(), Decision(SETTLE, ""), id="empty root"),
    pytest.param(root(1, 2, 3), replica(), Decision(Inspect(3), ""), id="newest first: fingerprint it"),
    pytest.param(root(1, 2, 3, seen=(3,)), replica(), Decision(Load(3, "fp3"), ""), id="then load it"),
    pytest.param(root(1, 2, 3, seen=(3,)), replica(rejected={3: "fp3"}), Decision(Inspect(2), ""),
                 id="a version rejected as it is is passed over"),
    pytest.param(root(1, 2, 3, seen=(3, 2)), replica(rejected={3: "fp3"}), Decision(Load(2, "fp2"), ""),
                 id="the next older one gets its turn"),
    pytest.param(root(1, 2, 3, seen=(3,)), replica(rejected={3: "fp3-before"}), Decision(Load(3, "fp3"), ""),
                 id="a rejected folder that changed is tried again"),
    pytest.param(root(1, 2, 3), replica(serving=3), Decision(SETTLE, ""),
                 id="serving the newest: nothing to look at"),
    pytest.param(root(1, 2, 3, 4), replica(serving=3), Decision(Inspect(4), ""), id="a newer version appears"),
    pytest.param(root(1, 2, 3, 4, seen=(4,)), replica(serving=3, rejected={4: "fp4"}), Decision(SETTLE, ""),
                 id="never back to an older version than the current"),
    pytest.param(root(1, 2, seen=(1, 2)), replica(rejected={1: "fp1", 2: "fp2"}), Decision(SETTLE, ""),
                 id="every version rejected: nothing served, nothing retried"),
    pytest.param(root(1, 3, seen=(3,)), replica(serving=2), Decision(Load(3, "fp3"), ""),
                 id="the current version may be gone from the root"),
    pytest.param(root(unreachable="listing failed"), replica(serving=2), Decision(SETTLE, ""),
                 id="root unreachable: the current version serves on"),
])
def test_without_a_pin_the_newest_valid_version_is_served(snapshot, view, expected):
    assert decide(snapshot, view) == expected


# --------------------------------------------------------------------------- the model root's pin


@pytest.mark.parametrize("snapshot, view, expected", [
    pytest.param(root(1, 2, 3, pin=1), replica(serving=3), Decision(Inspect(1), None), id="pinned back"),
    pytest.param(root(1, 2, 3, pin=1, seen=(1,)), replica(serving=3), Decision(Load(1, "fp1"), None),
                 id="pinned back: load it"),
    pytest.param(root(1, 2, 3, pin=3, seen=(3,)), replica(serving=1), Decision(Load(3, "fp3"), None),
                 id="pinned forward"),
    pytest.param(root(1, 2, 3, 4, pin=1), replica(serving=1), Decision(SETTLE, ""),
                 id="a newer version does not move a pinned replica"),
    pytest.param(root(1, 2, 3, pin=1), replica(), Decision(Inspect(1), None),
                 id="a new replica follows the pin before trying anything newer"),
    pytest.param(root(1, 2, 3, pin=9), replica(serving=3),
                 Decision(SETTLE, "pinned version 9 is not in the model root; version 3 keeps serving"),
                 id="pinned version missing"),
    pytest.param(root(pin=9), replica(),
                 Decision(SETTLE, "pinned version 9 is not in the model root; nothing is served until it can be"),
                 id="pinned version missing, nothing served"),
    pytest.param(root(1, 2, 3, 4, pin=4, seen=(4,)), replica(serving=3, rejected={4: "fp4"}),
                 Decision(SETTLE, "pinned version 4 was rejected (bad checksum); version 3 keeps serving"),
                 id="pinned version rejected as it is"),
    pytest.param(root(1, 2, 3, 4, pin=4, seen=(4,)), replica(serving=3, rejected={4: "fp4-before"}),
                 Decision(Load(4, "fp4"), None), id="pinned version rejected, then repaired"),
    pytest.param(root(1, 2, 3, unreadable_pin=True), replica(serving=2),
                 Decision(SETTLE, "the model root's pin cannot be read: PinDamaged reading"),
                 id="an unreadable pin changes nothing: no guessing"),
    pytest.param(root(1, 2, 3, unreadable_pin=True), replica(),
                 Decision(SETTLE, "the model root's pin cannot be read: PinDamaged reading"),
                 id="an unreadable pin loads nothing, not even the newest"),
])
def test_the_model_roots_pin_is_followed_both_ways_or_says_why_not(snapshot, view, expected):
    assert decide(snapshot, view) == expected


# --------------------------------------------------------------------------- this replica's --version


@pytest.mark.parametrize("snapshot, view, expected", [
    pytest.param(root(1, 2, 3, pin=1), replica(flag=2), Decision(Inspect(2), None), id="--version wins over the pin"),
    pytest.param(root(1, 2, 3, unreadable_pin=True), replica(flag=2), Decision(Inspect(2), None),
                 id="--version does not need the root's pin"),
    pytest.param(root(1, 2, 3), replica(serving=2, flag=2), Decision(SETTLE, ""), id="--version served"),
    pytest.param(root(1, 2, 3, 4, 5, seen=(5,)), replica(serving=2, flag=5, rejected={5: "fp5"}),
                 Decision(SETTLE, "pinned version 5 was rejected (bad checksum); version 2 keeps serving"),
                 id="--version rejected"),
    # An unreachable root lists nothing, so a pinned version not served yet reads as missing until it answers.
    pytest.param(root(unreachable="listing failed"), replica(serving=2, flag=5),
                 Decision(SETTLE, "pinned version 5 is not in the model root; version 2 keeps serving"),
                 id="--version while the root is unreachable"),
])
def test_the_version_flag_holds_this_replica(snapshot, view, expected):
    assert decide(snapshot, view) == expected


# --------------------------------------------------------------------------- one poll, step by step


def poll(snapshot: RootSnapshot, view: ReplicaView, bad: set[int]) -> list[Step]:
    """What the manager does with the policy in one poll: fingerprint, load (the versions in ``bad`` are
    rejected), ask again, until it settles."""
    steps: list[Step] = []
    while True:
        step = decide(snapshot, view).step
        steps.append(step)
        if isinstance(step, Inspect):
            snapshot = snapshot.with_fingerprint(step.version, FP[step.version])
        elif isinstance(step, Load) and step.version in bad:
            view = ReplicaView(view.version_flag, view.serving,
                               {**view.rejected, step.version: Rejection(step.fingerprint, "bad")})
        elif isinstance(step, Load):
            view = ReplicaView(view.version_flag, step.version, view.rejected)
        else:
            return steps


@pytest.mark.parametrize("snapshot, view, bad, expected", [
    pytest.param(root(1, 2, 3), replica(), {3, 2},
                 [Inspect(3), Load(3, "fp3"), Inspect(2), Load(2, "fp2"), Inspect(1), Load(1, "fp1"), SETTLE],
                 id="bad newest versions: the newest valid one, in one poll"),
    pytest.param(root(1, 2, 3, seen=(3, 2)), replica(serving=1, rejected={3: "fp3", 2: "fp2"}), set(), [SETTLE],
                 id="the next poll retries nothing"),
    pytest.param(root(1, 2, 3, 4), replica(serving=2), set(), [Inspect(4), Load(4, "fp4"), SETTLE],
                 id="only versions newer than the current are looked at"),
    pytest.param(root(1, 2, 3, pin=2), replica(serving=3), {2}, [Inspect(2), Load(2, "fp2"), SETTLE],
                 id="a rejected pin is tried once"),
])
def test_one_poll_tries_candidates_newest_first_and_stops(snapshot, view, bad, expected):
    assert poll(snapshot, view, bad) == expected
