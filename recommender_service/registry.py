"""The manager: watches the model root, applies the serving policy's
decisions, swaps the one reference requests read, and keeps every version's
state for GetModelStatus (TF Serving's manager).

The parts it drives, each a module with one job:

* ``source``: what the root offers at a poll (versions, pin, hidden movies), as a snapshot;
* ``policy``: what to load next and what the pin problem is, a pure function;
* ``loader``: one version from its folder to a warmed LoadedModel
  (validation itself in a helper process, ``isolation``; object-store copies
  in ``version_cache``).

Availability first: a candidate is loaded on the watcher thread, checked
against its manifest, smoke-tested against its own ``serving_default``
signature and warmed before one reference assignment makes it current.
Requests read that reference once, so an in-flight call finishes on the
version it started with. Any failure leaves the current version serving and is
remembered with the folder's fingerprint, so a bad version costs one attempt
until its folder changes, not one per poll.

A model root that cannot be read (``model_root.RootUnreachable``, the one
storage error) says nothing about any version: serving continues on the
loaded version, nothing is marked bad, and the next poll tries again.

The operators' hidden movies (``movierec_common.hidden_movies``) are applied
at each poll, before any version is loaded, whatever version is served (a
replica held by ``--version`` too). Rules that cannot be read or followed
change nothing: the last rules applied stay in force and ``hidden_problem``
says why, as the pin's problem does.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from movierec.v1.vocabulary import AVAILABLE, LOADING, REJECTED, RETIRED, SERVING
from movierec_common.artifact import ArtifactError
from movierec_common.hidden_movies import NO_HIDDEN_RULES, HiddenRules
from movierec_common.logs import event
from movierec_common.metrics import hidden_movies, model_loaded, model_reload_failed
from movierec_common.model_root import RootUnreachable, is_local, remove_serving_marker, write_serving_marker
from movierec_common.rejections import record_rejection
from movierec_common.signing import PublishingKeys
from recommender_service.loader import Validate, VersionLoader
from recommender_service.model import LoadedModel
from recommender_service.policy import Inspect, Load, Rejection, ReplicaView, decide
from recommender_service.source import HiddenReading, PinReading, RootSnapshot, RootSource
from recommender_service.validation import validate_version
from recommender_service.version_cache import VersionCache

log = logging.getLogger(__name__)

MARKER_REFRESH_SECONDS = 60.0


@dataclass
class VersionInfo:
    version: int
    state: str
    reason: str = ""
    fingerprint: str = ""
    model_kind: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


class LoadOutcome(enum.Enum):
    """What one attempt to load a version ended in."""

    SERVING = "serving"                    # swapped in
    REJECTED = "rejected"                  # refused, remembered with its fingerprint; an older version may be tried
    ROOT_UNREACHABLE = "root_unreachable"  # nothing concluded about the version; the next poll tries again


class ModelRegistry:
    """One replica's versions: the one it serves, and what it knows of the others.

    ``loader`` validates one version's local folder (validation.validate_version
    in this process by default; the server passes an isolation.IsolatedLoader).
    """

    def __init__(self, model_root: str, *, poll_seconds: float = 1.0, pinned_version: int | None = None,
                 replica_id: str | None = None, loader: Validate = validate_version, cache_dir: str | None = None,
                 publish_keys: PublishingKeys | None = None):
        self.model_root = model_root
        # With publish_keys, only versions and pins signed by one of them are served and followed.
        self._source = RootSource(model_root, publish_keys)
        self._cache = None if is_local(model_root) else VersionCache(cache_dir)
        self._loader = VersionLoader(loader, self._cache, publish_keys)
        self.poll_seconds = poll_seconds
        # --version holds this replica alone and wins over the model root's pin,
        # which every replica reads at each poll (see policy.decide).
        self._version_flag = pinned_version
        self._root_pin: int | None = None  # as last read
        self._pin_problem = ""
        self._hidden = NO_HIDDEN_RULES  # the rules applied: one immutable value, replaced whole when they change
        self._hidden_problem = ""
        self.replica_id = replica_id or f"{socket.gethostname()}-{os.getpid()}"
        self._current: LoadedModel | None = None
        self._versions: dict[int, VersionInfo] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._root_visible = True
        self._marker_written = 0.0
        self._marker_problem = ""  # why the last marker write failed; "" when it succeeded
        self.on_change: Callable[[LoadedModel], None] = lambda model: None

    # -- request path ---------------------------------------------------------

    def current(self) -> LoadedModel | None:
        return self._current

    def status(self) -> tuple[LoadedModel | None, list[VersionInfo]]:
        with self._lock:
            versions = sorted((dataclasses.replace(v) for v in self._versions.values()),
                              key=lambda v: v.version, reverse=True)
        return self._current, versions

    @property
    def pinned_version(self) -> int | None:
        """The version this replica is held to: its --version, else the model root's pin; None: the newest."""
        return self._version_flag if self._version_flag is not None else self._root_pin

    @property
    def pin_source(self) -> str:
        """Where pinned_version comes from: "VERSION_FLAG", "MODEL_ROOT", or "" when nothing is pinned."""
        if self._version_flag is not None:
            return "VERSION_FLAG"
        return "MODEL_ROOT" if self._root_pin is not None else ""

    @property
    def pin_problem(self) -> str:
        """Why the served version is not the pinned one ("" when it is, or nothing is pinned)."""
        return self._pin_problem

    def hidden_rules(self) -> HiddenRules:
        """The operators' hidden movies this replica applies: the same value (and array) until they change,
        so a call reads it once, and per-rules work can be kept by its identity."""
        return self._hidden

    @property
    def hidden_problem(self) -> str:
        """Why the model root's hidden movies are not applied ("" when they are); the last rules applied
        stay in force meanwhile."""
        return self._hidden_problem

    # -- watcher --------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)
        if self._current is not None:
            try:  # no longer serving: retention and ListVersions should know now, not when the marker ages out
                remove_serving_marker(self.model_root, self.replica_id)
            except RootUnreachable:  # unreachable, or read-only (RootAccessDenied): the marker ages out instead
                pass
        if self._cache is not None:
            self._cache.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # the watcher must outlive any surprise (an unreachable root is no surprise)
                log.exception("model poll failed")
            self._stop.wait(self.poll_seconds)

    def poll_once(self) -> None:
        snapshot = self._source.snapshot(read_pin=self._version_flag is None)
        self._note_hidden(snapshot.hidden)  # first: a takedown must not wait for a version to load
        self._note_root_visibility(bool(snapshot.versions))
        with self._lock:
            for v in snapshot.versions:
                self._versions.setdefault(v, VersionInfo(version=v, state=AVAILABLE))
        if self._version_flag is None:
            self._note_root_pin(snapshot.pin)
        try:
            self._follow_policy(snapshot)
        except RootUnreachable:  # a folder could not be listed: nothing can be concluded until the next poll
            pass
        self._refresh_marker()  # at once after a swap, so ListVersions' served_by and retention see it

    def _follow_policy(self, snapshot: RootSnapshot) -> None:
        """Asks the policy what to do, does it, and asks again with what it learnt, until it settles.

        Each round either fingerprints a version, serves one, or rejects one,
        so the rounds end; an unreachable root ends them until the next poll.
        """
        while True:
            decision = decide(snapshot, self._replica_view())
            if decision.pin_problem is not None:
                self._note_pin_problem(decision.pin_problem, snapshot.pin)
            step = decision.step
            if isinstance(step, Inspect):
                snapshot = snapshot.with_fingerprint(step.version, self._source.fingerprint(step.version))
            elif isinstance(step, Load):
                if self._try_load(step.version, step.fingerprint) is LoadOutcome.ROOT_UNREACHABLE:
                    return
            else:
                return

    def _replica_view(self) -> ReplicaView:
        current = self._current
        with self._lock:
            rejected = {v: Rejection(info.fingerprint, info.reason)
                        for v, info in self._versions.items() if info.state == REJECTED}
        return ReplicaView(version_flag=self._version_flag, serving=current.version if current else None,
                           rejected=rejected)

    def _note_root_pin(self, pin: PinReading) -> None:
        """Remembers the model root's pin as read (an unreadable one leaves the last one read)."""
        if pin.readable and pin.version != self._root_pin:
            event(log, "model root pin changed", pinned_version=pin.version, previous=self._root_pin)
            self._root_pin = pin.version

    def _note_hidden(self, reading: HiddenReading) -> None:
        """Applies readable rules (an event when they change, nothing otherwise); unreadable ones leave the
        last rules applied in force and set hidden_problem, logged once per change, not once per poll."""
        applied = self._hidden
        if reading.readable and not reading.rules.same_as(applied):
            self._hidden = reading.rules  # one reference assignment: a call sees the old rules or the new
            hidden_movies(int(reading.rules.movie_ids.size))
            event(log, "hidden movies changed", hidden_movies=int(reading.rules.movie_ids.size),
                  sequence=reading.rules.sequence, previous_movies=int(applied.movie_ids.size),
                  previous_sequence=applied.sequence)
        problem = "" if reading.readable else (
            f"{reading.problem}; the last hidden movies applied stay in force ({applied.movie_ids.size:,} movies, "
            f"sequence {applied.sequence})")
        if problem != self._hidden_problem:
            if problem:
                event(log, "hidden movies not applied", logging.WARNING, problem=reading.problem, error=reading.error)
            else:
                event(log, "hidden movies applied again", sequence=self._hidden.sequence)
            self._hidden_problem = problem

    def _note_pin_problem(self, problem: str, pin: PinReading) -> None:
        """Keeps the problem for GetModelStatus and logs it once, not once per poll."""
        if problem != self._pin_problem:
            self._pin_problem = problem
            if problem:
                fields: dict[str, Any] = {"error": pin.error} if pin.error else {}
                event(log, "pin not followed", logging.WARNING, problem=problem, **fields)

    def _try_load(self, version: int, fingerprint: str) -> LoadOutcome:
        self._set_state(version, LOADING, fingerprint=fingerprint)
        try:
            model, checks = self._loader.load(version, self._source.path(version), fingerprint)
        except RootUnreachable as exc:  # says nothing about the version: retry at the next poll
            self._set_state(version, AVAILABLE, reason=f"{exc}; will retry", fingerprint=fingerprint)
            event(log, "version not loaded: model root unreachable", logging.WARNING, version=version,
                  reason=str(exc))
            model_reload_failed("unreachable")
            return LoadOutcome.ROOT_UNREACHABLE
        except Exception as exc:  # any other failure is the version's: it is rejected, the current one serves on
            reason = str(exc) if isinstance(exc, ArtifactError) else f"{type(exc).__name__}: {exc}"
            self._set_state(version, REJECTED, reason=reason, fingerprint=fingerprint)
            event(log, "version rejected", logging.WARNING, version=version, reason=reason)
            model_reload_failed("rejected")
            self._report_rejection(version, fingerprint, reason)
            return LoadOutcome.REJECTED
        self._swap(model, fingerprint, checks)
        return LoadOutcome.SERVING

    def _swap(self, model: LoadedModel, fingerprint: str, checks: dict[str, Any]) -> None:
        previous = self._current
        self._current = model  # the swap: one reference assignment
        with self._lock:
            if previous is not None and previous.version in self._versions:
                self._versions[previous.version].state = RETIRED
        self._set_state(model.version, SERVING, fingerprint=fingerprint, model_kind=model.model_kind,
                        metrics=dict(model.metadata.metrics))
        retriever = model.retriever
        load_seconds = model.serving["serving_load_seconds"]
        event(log, "version serving", version=model.version, previous=previous.version if previous else None,
              model_kind=model.model_kind, backend=retriever.top_k.name, movies=retriever.num_items,
              ranked_users=retriever.rankings.num_users, load_seconds=load_seconds, **checks)
        model_loaded(model.version, load_seconds)
        self._marker_written = 0.0
        self.on_change(model)

    def _set_state(self, version: int, state: str, *, reason: str = "", fingerprint: str | None = None,
                   model_kind: str | None = None, metrics: dict[str, float] | None = None) -> None:
        """Sets a version's state and reason (cleared unless given); other fields change only when given."""
        with self._lock:
            info = self._versions.setdefault(version, VersionInfo(version=version, state=state))
            info.state = state
            info.reason = reason
            if fingerprint is not None:
                info.fingerprint = fingerprint
            if model_kind is not None:
                info.model_kind = model_kind
            if metrics is not None:
                info.metrics = metrics

    def _note_root_visibility(self, visible: bool) -> None:
        if visible != self._root_visible:
            self._root_visible = visible
            if visible:
                event(log, "model root visible again", root=self.model_root)
            elif self._current is not None:
                event(log, "model root shows no versions (empty or unreachable); serving continues on the loaded one",
                      logging.WARNING, root=self.model_root, serving=self._current.version)
            else:
                event(log, "model root shows no versions yet (empty or unreachable); nothing to serve until one "
                           "appears", root=self.model_root)

    def _report_rejection(self, version: int, fingerprint: str, reason: str) -> None:
        """Tells retention, through the root, that this replica refused version (movierec_common.rejections).

        Best effort: a root this replica cannot write only means retention may
        count the version valid; the rejection itself stands here either way.
        """
        with self._lock:
            listed = set(self._versions)
        try:
            record_rejection(self.model_root, self.replica_id, version, fingerprint, reason, still_listed=listed)
        except RootUnreachable as exc:
            event(log, "rejection not recorded in the model root", logging.WARNING, version=version,
                  error=str(exc))

    def _refresh_marker(self) -> None:
        """Rewrites this replica's serving marker, at once after a swap and every MARKER_REFRESH_SECONDS.

        A marker that cannot be written leaves retention blind to what this
        replica serves, so it is not swallowed: it is logged (once per change)
        and shown as the served version's reason in GetModelStatus until a
        write succeeds. A read-only root (RootAccessDenied) is allowed, and shown the same way.
        """
        current = self._current
        if current is None or time.time() - self._marker_written < MARKER_REFRESH_SECONDS:
            return
        try:
            write_serving_marker(self.model_root, self.replica_id, current.version)
            problem = ""
        except RootUnreachable as exc:
            problem = f"serving marker not written: {exc}"
        with self._lock:
            info = self._versions.get(current.version)
            if info is not None and info.state == SERVING:
                info.reason = problem
        if problem != self._marker_problem:
            if problem:
                event(log, "serving marker not written", logging.WARNING, version=current.version, error=problem)
            else:
                event(log, "serving marker written again", version=current.version)
            self._marker_problem = problem
        self._marker_written = time.time()
