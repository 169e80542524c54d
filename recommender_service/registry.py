"""Discovers, validates, warms and swaps model versions (TF Serving's
source → loader → manager, in one small module).

Availability first: a candidate is loaded on the watcher thread, checked
against its manifest, smoke-tested against its own ``serving_default``
signature and warmed before one reference assignment makes it current.
Requests read that reference once, so an in-flight call finishes on the
version it started with. Any failure leaves the current version serving and is
remembered with the folder's fingerprint, so a bad version costs one attempt
until its folder changes, not one per poll.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from movierec_common import artifact as artifact_format
from movierec_common.logs import event
from movierec_common.model_root import folder_fingerprint, list_versions, version_dir, write_serving_marker
from recommender_service.retrieval import Retriever

log = logging.getLogger(__name__)

SERVING, AVAILABLE, LOADING, REJECTED, RETIRED = "SERVING", "AVAILABLE", "LOADING", "REJECTED", "RETIRED"
MARKER_REFRESH_SECONDS = 60.0


@dataclass(frozen=True)
class LoadedModel:
    version: int
    retriever: Retriever
    metadata: dict[str, Any]
    loaded_at: float

    @property
    def model_kind(self) -> str:
        return str(self.metadata.get("model_kind", ""))


@dataclass
class VersionInfo:
    version: int
    state: str
    reason: str = ""
    fingerprint: str = ""
    model_kind: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


def _smoke_test(retriever: Retriever, loaded_module) -> None:
    """The numpy path and the SavedModel's own signature must agree.

    Catches vectors that load but are garbage for the signature's graph, and
    proves the signature TF Serving would use actually runs.
    """
    from movierec_common.tfenv import tensorflow

    tf = tensorflow()
    artifact = retriever.artifact
    probe_users = artifact.user_ids[np.linspace(0, artifact.num_users - 1, num=min(5, artifact.num_users), dtype=int)]
    k = min(10, artifact.num_items)
    signature = loaded_module.signatures[artifact_format.SERVING_SIGNATURE]
    output = signature(user_id=tf.constant([str(u) for u in probe_users] + ["\x00unknown-user"]), k=tf.constant(k, tf.int32))
    expected_scores = output["scores"].numpy()
    for row, user_id in enumerate(probe_users):
        ours = retriever.recommend(str(user_id), k, exclude_seen=True)
        theirs = expected_scores[row][np.isfinite(expected_scores[row])]
        if len(ours.items) != len(theirs) or not np.allclose([i.score for i in ours.items], theirs, rtol=1e-3, atol=1e-4):
            raise artifact_format.ArtifactError(
                f"smoke query for user {user_id} disagrees with the SavedModel's signature"
            )
    if not bool(output["cold_start"].numpy()[-1]):
        raise artifact_format.ArtifactError("smoke query: the signature did not flag an unknown user as cold start")


def validate_version(path: str) -> tuple[artifact_format.ModelArtifact, dict[str, Any]]:
    """Everything a candidate must pass before it may serve. Raises ArtifactError.

    This is the TensorFlow-heavy part (load the SavedModel, run its
    signature); :class:`IsolatedLoader` runs it in a helper process.
    """
    metadata = artifact_format.read_metadata(path)
    artifact_format.verify_manifest(path, metadata.get("files"))
    artifact, module = artifact_format.load(path)
    _smoke_test(Retriever(artifact), module)
    return artifact, metadata


def warmed_retriever(artifact: artifact_format.ModelArtifact) -> Retriever:
    retriever = Retriever(artifact)
    # Warm the request path (first calls allocate and fault pages in).
    for user_id in artifact.user_ids[:32].tolist() + ["\x00cold"]:
        retriever.recommend(user_id, 10)
    retriever.similar_items(int(artifact.movie_ids[0]), 10)
    return retriever


def _background_priority() -> None:
    """The loader yields the CPU to request threads: a reload may take a little
    longer, but it no longer competes with callers on a busy machine."""
    os.nice(19)


class IsolatedLoader:
    """Validates versions in one long-lived helper process.

    Loading a SavedModel is mostly Python holding the GIL for hundreds of
    milliseconds, which in-process would stall request threads (the reload
    p99); a crash inside TensorFlow on a corrupt file would take the server
    down. In a helper process at the lowest CPU priority neither reaches the
    requests: only the validated arrays come back, pickled.
    """

    def __init__(self):
        self._pool = None

    def __call__(self, path: str) -> tuple[artifact_format.ModelArtifact, dict[str, Any]]:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_background_priority)
        try:
            return self._pool.submit(validate_version, path).result()
        except BrokenProcessPool as exc:
            self._pool = None
            raise artifact_format.ArtifactError("the loader process died while loading this version") from exc

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class ModelRegistry:
    def __init__(self, model_root: str, *, poll_seconds: float = 1.0, pinned_version: int | None = None,
                 replica_id: str | None = None, loader=validate_version):
        self.model_root = model_root
        self._validate = loader
        self.poll_seconds = poll_seconds
        self.pinned_version = pinned_version
        self.replica_id = replica_id or f"{socket.gethostname()}-{os.getpid()}"
        self._current: LoadedModel | None = None
        self._versions: dict[int, VersionInfo] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._root_visible = True
        self._marker_written = 0.0
        self.on_change = lambda model: None

    # -- request path ---------------------------------------------------------

    def current(self) -> LoadedModel | None:
        return self._current

    def status(self) -> tuple[LoadedModel | None, list[VersionInfo]]:
        with self._lock:
            versions = sorted((VersionInfo(**vars(v)) for v in self._versions.values()),
                              key=lambda v: v.version, reverse=True)
        return self._current, versions

    # -- watcher --------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # the watcher must outlive any surprise
                log.exception("model poll failed")
            self._stop.wait(self.poll_seconds)

    def poll_once(self) -> None:
        versions = list_versions(self.model_root)
        self._note_root_visibility(bool(versions))
        with self._lock:
            for v in versions:
                self._versions.setdefault(v, VersionInfo(version=v, state=AVAILABLE))
        current = self._current
        for v in sorted(versions, reverse=True):
            if self.pinned_version is not None and v != self.pinned_version:
                continue
            if current is not None and v == current.version:
                break
            if current is not None and self.pinned_version is None and v < current.version:
                break
            path = version_dir(self.model_root, v)
            fingerprint = folder_fingerprint(path)
            info = self._versions[v]
            if info.state == REJECTED and info.fingerprint == fingerprint:
                continue
            if self._try_load(v, path, fingerprint):
                break
        self._refresh_marker()

    def _try_load(self, version: int, path: str, fingerprint: str) -> bool:
        self._set_state(version, LOADING, fingerprint=fingerprint)
        started = time.monotonic()
        try:
            artifact, metadata = self._validate(path)
            retriever = warmed_retriever(artifact)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, artifact_format.ArtifactError) else f"{type(exc).__name__}: {exc}"
            self._set_state(version, REJECTED, reason=reason, fingerprint=fingerprint)
            event(log, "version rejected", logging.WARNING, version=version, reason=reason)
            return False
        model = LoadedModel(version=version, retriever=retriever, metadata=metadata, loaded_at=time.time())
        previous = self._current
        self._current = model  # the swap: one reference assignment
        with self._lock:
            if previous is not None and previous.version in self._versions:
                self._versions[previous.version].state = RETIRED
        self._set_state(version, SERVING, fingerprint=fingerprint, model_kind=model.model_kind,
                        metrics=dict(metadata.get("metrics", {})))
        event(log, "version serving", version=version, previous=previous.version if previous else None,
              model_kind=model.model_kind, load_seconds=round(time.monotonic() - started, 3))
        self._marker_written = 0.0
        self.on_change(model)
        return True

    def _set_state(self, version: int, state: str, **fields) -> None:
        with self._lock:
            info = self._versions.setdefault(version, VersionInfo(version=version, state=state))
            info.state = state
            info.reason = fields.pop("reason", "")
            for name, value in fields.items():
                setattr(info, name, value)

    def _note_root_visibility(self, visible: bool) -> None:
        if visible != self._root_visible:
            self._root_visible = visible
            if visible:
                event(log, "model root visible again", root=self.model_root)
            else:
                event(log, "model root shows no versions; serving continues on the loaded one",
                      logging.WARNING, root=self.model_root)

    def _refresh_marker(self) -> None:
        current = self._current
        if current is None or time.time() - self._marker_written < MARKER_REFRESH_SECONDS:
            return
        try:
            write_serving_marker(self.model_root, self.replica_id, current.version)
            self._marker_written = time.time()
        except Exception:  # a read-only root is allowed; retention then protects nothing
            self._marker_written = time.time()
