"""Discovers, validates, warms and swaps model versions (TF Serving's
source → loader → manager, in one small module).

Availability first: a candidate is loaded on the watcher thread, checked
against its manifest, smoke-tested against its own ``serving_default``
signature and warmed before one reference assignment makes it current.
Requests read that reference once, so an in-flight call finishes on the
version it started with. Any failure leaves the current version serving and is
remembered with the folder's fingerprint, so a bad version costs one attempt
until its folder changes, not one per poll.

What is served is the newest valid version unless a pin says otherwise: the
replica's own ``--version``, else the pin in the model root, which every
replica reads at each poll (so an operator's rollback reaches all of them
within one poll and a load). A pin that cannot be honoured (a missing or
rejected version, a pin that cannot be read) changes nothing: the current
version keeps serving and ``GetModelStatus`` says why.

A version with an approximate index (see movierec_common.ann_index) is served
through it; its smoke test measures the index's recall against the exact
signature instead of demanding identical answers.

A version's ``query_encoder`` (how sessions become queries, see
movierec_common.session_query) is read here too: absent, the version serves
everything but sessions; present but unusable, the version is rejected.
"""

from __future__ import annotations

import ctypes
import glob
import io
import logging
import os
import pickle
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from movierec.v1.vocabulary import AVAILABLE, LOADING, REJECTED, RETIRED, SERVING
from movierec_common import ann_index, launch, session_query
from movierec_common import artifact as artifact_format
from movierec_common import metrics as prometheus_metrics
from movierec_common.logs import event
from movierec_common.model_root import (
    PinDamaged,
    RootUnreachable,
    download,
    exists,
    folder_fingerprint,
    is_local,
    join,
    list_versions,
    read_pin,
    remove_serving_marker,
    version_dir,
    write_serving_marker,
)
from recommender_service.answers import AnswerCache
from recommender_service.retrieval import (
    RANKING_BUDGET_BYTES,
    BruteForce,
    Catalogue,
    FaissIVF,
    Rankings,
    Recommendation,
    Retriever,
    TopK,
    serving_layout,
)

log = logging.getLogger(__name__)

MARKER_REFRESH_SECONDS = 60.0
T = TypeVar("T")


@dataclass(frozen=True)
class LoadedModel:
    version: int
    retriever: Retriever
    metadata: artifact_format.VersionMetadata
    loaded_at: float
    serving: dict[str, float] = field(default_factory=dict)  # how it is served (GetModelStatus shows it)
    answers: AnswerCache = field(default_factory=AnswerCache, repr=False, compare=False)  # dies with the version

    @property
    def model_kind(self) -> str:
        return self.metadata.model_kind

    def recommend(self, user_id: str, k: int, exclude_seen: bool,
                  render: Callable[[LoadedModel, Recommendation], T], recent_movie_ids: Sequence[int] = ()) -> T:
        """One Recommend answer as ``render(self, ranked)`` makes it; answers without a session are kept
        (see recommender_service.answers), so a hit costs a dict lookup.

        Raises SessionsUnsupported for a session on a version published before sessions.
        """
        if len(recent_movie_ids):  # a session varies call by call: never kept
            return render(self, self.retriever.recommend_session(user_id, k, list(recent_movie_ids), exclude_seen))
        key = (user_id, k, exclude_seen)
        answer = self.answers.get(key)
        if answer is None:
            answer = render(self, self.retriever.recommend(user_id, k, exclude_seen))
            self.answers.put(key, answer)
        return answer


@dataclass
class VersionInfo:
    version: int
    state: str
    reason: str = ""
    fingerprint: str = ""
    model_kind: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ValidatedVersion:
    """What validation hands to the serving process: checked, compact, flat arrays.

    No item vectors when the version has an index: the serving process reads
    the (verified) index file itself, which holds them, instead of receiving
    a second copy.
    """

    catalogue: Catalogue
    rankings: Rankings
    metadata: artifact_format.VersionMetadata
    index_params: ann_index.IndexParams | None
    item_vectors: np.ndarray | None   # exact backend only
    item_norms: np.ndarray | None     # index backend only (cosine for SimilarItems)
    smoke: dict[str, float]
    query_encoder: session_query.QueryEncoder | None = None  # None: published before sessions


SMOKE_PROBES = 8
SMOKE_K = 10
# An approximate index may miss a few of the exact top 10; one that misses
# more than this on the probe users does not describe this model's vectors.
SMOKE_MIN_RECALL = 0.8
INDEX_CHECK_SAMPLE = 256


def smoke_test(retriever: Retriever, artifact: artifact_format.ModelArtifact, loaded_module) -> dict[str, float]:
    """The serving paths and the SavedModel's own exact signature must agree.

    Catches vectors that load but are garbage for the signature's graph, and
    proves the signature TF Serving would use actually runs. An exact backend
    must return the signature's scores; an approximate one must return k
    distinct unseen movies scored by their exact inner products, scores that
    match the signature's for the movies both found, and recall at least
    SMOKE_MIN_RECALL of the signature's top k over the probe users. Both the
    precomputed rankings and the live path are checked.
    """
    from movierec_common.tfenv import tensorflow

    tf = tensorflow()
    users = np.unique(np.linspace(0, artifact.num_users - 1, num=min(SMOKE_PROBES, artifact.num_users), dtype=int))
    k = min(SMOKE_K, artifact.num_items)
    signature = loaded_module.signatures[artifact_format.SERVING_SIGNATURE]
    output = signature(user_id=tf.constant([str(artifact.user_ids[u]) for u in users] + ["\x00unknown-user"]),
                       k=tf.constant(k, tf.int32))
    expected_ids, expected_scores = output["movie_ids"].numpy(), output["scores"].numpy()
    approximate = not retriever.top_k.exact
    recalls = []
    for row, user in enumerate(users.tolist()):
        user_id = str(artifact.user_ids[user])
        valid = np.isfinite(expected_scores[row])
        theirs, their_scores = expected_ids[row][valid], expected_scores[row][valid]
        for answer in (retriever.recommend(user_id, k, exclude_seen=True), retriever.recommend_live(user, k)):
            ids = np.array([item.movie_id for item in answer.items], dtype=np.int64)
            scores = np.array([item.score for item in answer.items], dtype=np.float32)
            if ids.size != theirs.size:
                raise artifact_format.ArtifactError(f"smoke query for user {user_id} returned {ids.size} movies, "
                                                    f"the SavedModel's signature {theirs.size}")
            if not approximate:
                if not np.allclose(scores, their_scores, rtol=1e-3, atol=1e-4):
                    raise artifact_format.ArtifactError(
                        f"smoke query for user {user_id} disagrees with the SavedModel's signature")
                continue
            _check_approximate_answer(retriever, artifact, user, user_id, ids, scores, theirs, their_scores)
            recalls.append(np.intersect1d(ids, theirs).size / max(theirs.size, 1))
    if not bool(output["cold_start"].numpy()[-1]):
        raise artifact_format.ArtifactError("smoke query: the signature did not flag an unknown user as cold start")
    recall = float(np.mean(recalls)) if recalls else 1.0
    if recall < SMOKE_MIN_RECALL:
        raise artifact_format.ArtifactError(
            f"smoke query: the approximate index finds {recall:.2f} of the SavedModel signature's exact top {k} "
            f"on {users.size} probe users (at least {SMOKE_MIN_RECALL} required)")
    return {"smoke_probes": float(users.size), "smoke_recall_at_10": round(recall, 4)}


def _check_approximate_answer(retriever, artifact, user, user_id, ids, scores, theirs, their_scores) -> None:
    positions = np.array([retriever.movie_index(int(i)) for i in ids], dtype=np.int64)
    problem = ""
    if np.unique(ids).size != ids.size:
        problem = "returned a movie twice"
    elif np.isin(positions, artifact.seen_items(user)).any():
        problem = "returned a movie the user has seen"
    elif not np.allclose(scores, artifact.item_vectors[positions] @ artifact.user_vectors[user], rtol=1e-4, atol=1e-5):
        problem = "returned scores that are not the movies' inner products"
    else:
        common, ours_at, theirs_at = np.intersect1d(ids, theirs, return_indices=True)
        if not np.allclose(scores[ours_at], their_scores[theirs_at], rtol=1e-3, atol=1e-4):
            problem = "disagrees with the SavedModel's signature on the scores of the movies both found"
    if problem:
        raise artifact_format.ArtifactError(f"smoke query for user {user_id} {problem}")


def read_query_encoder(metadata: artifact_format.VersionMetadata, num_items: int,
                       dim: int) -> session_query.QueryEncoder | None:
    """The version's session rule; None for versions published before sessions existed."""
    if metadata.query_encoder is None:
        return None
    try:
        return session_query.QueryEncoder.from_json(metadata.query_encoder, num_items, dim)
    except session_query.EncoderError as exc:
        raise artifact_format.ArtifactError(str(exc)) from None


def _session_smoke_test(retriever: Retriever) -> None:
    """A session of the most popular movies must be answerable, with finite scores, for a visitor and a user.

    Catches an encoder that parses but does not fit the served arrays (a
    pooled part reading the wrong columns, scales that overflow) before a
    caller does.
    """
    if retriever.sessions is None:
        return
    catalogue = retriever.catalogue
    recent = catalogue.movie_ids[catalogue.popular[:3]].tolist()
    k = min(SMOKE_K, catalogue.num_items)
    for user_id in ("\x00session-smoke", str(catalogue.user_ids[0])):
        answer = retriever.recommend_session(user_id, k, recent, exclude_seen=False)
        if len(answer.items) != k or not all(np.isfinite(item.score) for item in answer.items):
            raise artifact_format.ArtifactError(
                f"smoke query: a session of {len(recent)} movies did not get {k} finitely scored movies "
                f"({session_query.METADATA_KEY} does not fit the model's vectors)")


def open_backend(version: ValidatedVersion, path: str) -> TopK:
    """The TopK backend a validated version is served with, in the calling process."""
    params = version.index_params
    if params is None:
        return BruteForce(version.item_vectors)
    dim = int(version.catalogue.user_vectors.shape[1])
    index = ann_index.read(join(path, params.file), params, version.catalogue.num_items, dim)
    return FaissIVF(index, version.item_norms, params.max_first_fetch)


def _check_index_holds_the_model(backend: FaissIVF, artifact: artifact_format.ModelArtifact) -> None:
    """A sample of the index's vectors must be the SavedModel's, bit for bit."""
    rng = np.random.default_rng(0)
    n = artifact.num_items
    sample = np.unique(np.concatenate([[0, n - 1], rng.integers(0, n, size=min(INDEX_CHECK_SAMPLE, n))]))
    if not np.array_equal(backend.vectors(sample), artifact.item_vectors[sample]):
        raise artifact_format.ArtifactError(
            f"{ann_index.INDEX_FILE} holds other vectors than the SavedModel (built from another model?)")


def validate_version(path: str, ranking_budget_bytes: int = RANKING_BUDGET_BYTES) -> ValidatedVersion:
    """Everything a candidate must pass before it may serve. Raises ArtifactError.

    This is the TensorFlow-heavy part (load the SavedModel, run its
    signature, rank every user within the budget); :class:`IsolatedLoader`
    runs it in a helper process.
    """
    clock = _PhaseClock()
    metadata = artifact_format.read_metadata(path)
    params = ann_index.IndexParams.from_metadata(metadata.retrieval)
    manifest = metadata.files
    artifact_format.verify_manifest(path, manifest)
    if params is not None and params.file not in manifest:
        raise artifact_format.ArtifactError(
            f"metadata.json says the version has an index, but its manifest does not list {params.file}")
    clock.lap("manifest")
    artifact, module = artifact_format.load(path)
    encoder = read_query_encoder(metadata, artifact.num_items, int(artifact.item_vectors.shape[1]))
    catalogue = Catalogue.from_artifact(artifact)
    norms = None
    if params is not None:
        norms = np.maximum(np.linalg.norm(artifact.item_vectors, axis=1), 1e-12).astype(np.float32)
    version = ValidatedVersion(catalogue=catalogue, rankings=None, metadata=metadata, index_params=params,
                               item_vectors=None if params is not None else serving_layout(artifact.item_vectors),
                               item_norms=norms, smoke={}, query_encoder=encoder)
    clock.lap("savedmodel")
    backend = open_backend(version, path)
    if params is not None:
        _check_index_holds_the_model(backend, artifact)
    clock.lap("index")
    retriever = Retriever(catalogue, backend, ranking_budget_bytes=ranking_budget_bytes, query_encoder=encoder)
    clock.lap("rankings")
    smoke = smoke_test(retriever, artifact, module)
    _session_smoke_test(retriever)
    clock.lap("smoke")
    return ValidatedVersion(catalogue=catalogue, rankings=retriever.rankings, metadata=metadata, index_params=params,
                            item_vectors=version.item_vectors, item_norms=norms, smoke={**smoke, **clock.laps},
                            query_encoder=encoder)


class _PhaseClock:
    """Seconds per validation phase, logged with the version (where does a slow load go?)."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps[f"{name}_seconds"] = round(now - self._last, 3)
        self._last = now


def serving_facts(retriever: Retriever, version: ValidatedVersion) -> dict[str, float]:
    """How a version is served, for GetModelStatus (prefixed, beside its held-out metrics)."""
    facts = {"serving_ann": 0.0 if retriever.top_k.exact else 1.0,
             "serving_ranked_users": float(retriever.rankings.num_users),
             "serving_sessions": 0.0 if retriever.sessions is None else 1.0}
    if version.index_params is not None:
        facts.update(serving_ann_nlist=float(version.index_params.nlist),
                     serving_ann_nprobe=float(version.index_params.nprobe))
    facts.update({f"serving_{name}": value for name, value in version.smoke.items() if name.startswith("smoke_")})
    return facts


def warmed_retriever(version: ValidatedVersion, path: str) -> Retriever:
    retriever = Retriever(version.catalogue, open_backend(version, path), rankings=version.rankings,
                          query_encoder=version.query_encoder)
    # Warm the request path (first calls allocate and fault pages in).
    user_ids = version.catalogue.user_ids
    for user_id in user_ids[:32].tolist() + ["\x00cold"]:
        retriever.recommend(user_id, 10)
    for user_index in range(min(4, len(user_ids))):
        retriever.recommend_live(user_index, 10)
    retriever.similar_items(int(version.catalogue.movie_ids[0]), 10)
    if retriever.sessions is not None:
        recent = version.catalogue.movie_ids[:10].tolist()
        for user_id in [*user_ids[:4].tolist(), "\x00cold"]:
            retriever.recommend_session(user_id, 10, recent)
    return retriever


# The loader runs at the lowest CPU priority: a reload may take a little
# longer, but it no longer competes with callers on a busy machine.
LOADER_NICENESS = 19
# What a loader leaves in the temp folder while it works, named after its
# server's pid (launch.owned_prefix) so that a server killed meanwhile leaves
# nothing the next one does not remove.
HANDOFF_PREFIX, WARM_UP_PREFIX = "movierec-handoff-", "movierec-warm-"


def _configure_loader_process() -> None:
    """Runs in the helper before each task: its batched index searches use every
    core but one, which stays with the request threads even while it is busy.

    Not in the pool's initializer, which must stay light (see launch.init_helper).
    """
    ann_index.faiss.omp_set_num_threads(max(1, (os.cpu_count() or 1) - 1))


# Arrays at least this large cross from the helper as files the serving
# process maps, not as pickled bytes.
HANDOFF_MIN_BYTES = 1 << 16


class HandoffPickler(pickle.Pickler):
    """Writes each large numpy array to its own .npy file and pickles only its name.

    Unpickling a 100 MB array holds the GIL for ~0.1 s in the serving process
    (measured), which request threads feel; mapping a file holds it for
    microseconds, and its pages are read on first touch.
    """

    def __init__(self, file, folder: str):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.folder = folder
        self.count = 0
        # One array referenced twice (a catalogue's history that is its seen
        # list) crosses once and arrives as one mapping.
        self._written: dict[int, str] = {}

    def persistent_id(self, obj):
        if isinstance(obj, np.ndarray) and obj.dtype != object and obj.nbytes >= HANDOFF_MIN_BYTES:
            if id(obj) in self._written:
                return self._written[id(obj)]
            self.count += 1
            path = os.path.join(self.folder, f"{self.count}.npy")
            # Either memory order crosses as it is (.npy records it): the exact
            # backend's wide item matrices are column-major on purpose.
            contiguous = obj.flags.c_contiguous or obj.flags.f_contiguous
            np.save(path, obj if contiguous else np.ascontiguousarray(obj), allow_pickle=False)
            self._written[id(obj)] = path
            return path
        return None


class HandoffUnpickler(pickle.Unpickler):
    def __init__(self, file):
        super().__init__(file)
        self._mapped: dict[str, np.ndarray] = {}

    def persistent_load(self, path):
        if path not in self._mapped:
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
            os.unlink(path)  # the mapping keeps the data; nothing is left behind on disk
            self._mapped[path] = mapped.view(np.ndarray)
        return self._mapped[path]


def _validate_for_handoff(path: str, ranking_budget_bytes: int) -> tuple[str, bytes]:
    """Runs in the helper: validates, then hands the result over through a temp folder."""
    _configure_loader_process()
    folder = tempfile.mkdtemp(prefix=launch.owned_prefix(HANDOFF_PREFIX, os.getppid()))
    try:
        buffer = io.BytesIO()
        HandoffPickler(buffer, folder).dump(validate_version(path, ranking_budget_bytes))
        return folder, buffer.getvalue()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        _release_freed_memory()


def _release_freed_memory() -> None:
    """Hands the helper's freed heap back to the system between versions (glibc keeps it otherwise)."""
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _warm_up() -> None:
    """Runs in the helper: pays TensorFlow's one-time costs by validating a tiny version."""
    rng = np.random.default_rng(0)
    artifact = artifact_format.ModelArtifact(
        user_ids=np.array(["1", "2"], dtype=object), user_vectors=rng.normal(size=(2, 4)).astype(np.float32),
        movie_ids=np.array([1, 2, 3], dtype=np.int64), titles=np.array(["a", "b", "c"], dtype=object),
        item_vectors=rng.normal(size=(3, 4)).astype(np.float32), seen_indptr=np.array([0, 1, 1], dtype=np.int64),
        seen_indices=np.array([0], dtype=np.int32), popularity=np.ones(3, dtype=np.float32))
    _configure_loader_process()
    folder = tempfile.mkdtemp(prefix=launch.owned_prefix(WARM_UP_PREFIX, os.getppid()))
    try:
        path = os.path.join(folder, "1")
        artifact_format.write_version(path, artifact, artifact_format.VersionMetadata(model_kind="warm-up"))
        validate_version(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _release_freed_memory()


def _log_warm_up_failure(future) -> None:
    if not future.cancelled() and future.exception() is not None:
        event(log, "loader warm-up failed; the first version will pay the start-up cost", logging.WARNING,
              error=f"{type(future.exception()).__name__}: {future.exception()}")


class IsolatedLoader:
    """Validates versions in one long-lived helper process.

    Loading a SavedModel is mostly Python holding the GIL for hundreds of
    milliseconds, which in-process would stall request threads (the reload
    p99); a crash inside TensorFlow on a corrupt file would take the server
    down. In a helper process at the lowest CPU priority neither reaches the
    requests. What comes back is flat arrays, handed over as files this
    process maps (see :class:`HandoffPickler`), and never the item vectors of
    a version with an index: this process reads the index file itself.
    """

    def __init__(self, ranking_budget_bytes: int = RANKING_BUDGET_BYTES):
        self._pool = None
        self.ranking_budget_bytes = ranking_budget_bytes

    def start(self) -> None:
        """Starts the helper and warms it up in the background.

        Importing TensorFlow and loading a first SavedModel cost seconds once
        per process (7-9 s of a first load on this 2-core machine with three
        replicas starting together); paid at start-up, they are not part of
        the time between a publish and the replica serving it.

        Temp folders a killed server's loader left behind go first.
        """
        for prefix in (HANDOFF_PREFIX, WARM_UP_PREFIX):
            for path in launch.remove_orphaned_folders(tempfile.gettempdir(), prefix):
                event(log, "removed a dead server's loader folder", path=path)
        self._ensure_pool().submit(_warm_up).add_done_callback(_log_warm_up_failure)

    def _ensure_pool(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if self._pool is None:
            # The helper ends with this process (launch.exit_with_parent), and so
            # does multiprocessing's resource tracker, which exits when the last
            # holder of its pipe (this process, the helper) is gone. The pool is
            # made on the main thread at start() and, after a crash, on the watcher
            # thread: both live as long as the server, as PR_SET_PDEATHSIG requires.
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=launch.init_helper,
                                             initargs=(os.getpid(), LOADER_NICENESS))
        return self._pool

    def __call__(self, path: str) -> ValidatedVersion:
        from concurrent.futures.process import BrokenProcessPool

        try:
            future = self._ensure_pool().submit(_validate_for_handoff, path, self.ranking_budget_bytes)
        except BrokenProcessPool:  # it died before this version (in its warm-up, say): a fresh helper
            self._pool = None
            future = self._ensure_pool().submit(_validate_for_handoff, path, self.ranking_budget_bytes)
        try:
            folder, data = future.result()
        except BrokenProcessPool as exc:
            self._pool = None
            # One task at a time: whatever hand-over folder of this server exists now was the dead helper's.
            for leftover in glob.glob(os.path.join(tempfile.gettempdir(), launch.owned_prefix(HANDOFF_PREFIX) + "*")):
                shutil.rmtree(leftover, ignore_errors=True)
            raise artifact_format.ArtifactError("the loader process died while loading this version") from exc
        try:
            return HandoffUnpickler(io.BytesIO(data)).load()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def shutdown(self) -> None:
        """Ends the helper at once; a validation it was running is of no use any more.

        Waiting for it instead would hold the server's exit (Python joins a
        pool's processes at exit) for as long as the lowest-priority process
        of a busy machine takes to be scheduled: 20-30 s measured beside ten
        busy processes on two cores.
        """
        if self._pool is not None:
            # ProcessPoolExecutor offers no public way to stop its workers before Python 3.14.
            helpers = list(getattr(self._pool, "_processes", {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for helper in helpers:
                helper.kill()


class RootUnavailable(Exception):
    """The model root could not be read; says nothing about the version itself."""


class VersionCache:
    """Local copies of versions from an object-store root.

    TensorFlow and faiss read local files, and a version must be verified as
    the bytes that will be loaded, so a remote version is copied here first
    and validated from the copy. Nothing is downloaded before ``metadata.json``
    exists (it is written last), so a version still being uploaded costs a
    listing, not a download. Only the served version's copy is kept.
    """

    def __init__(self, folder: str | None):
        # A folder of this process's own inside the given one: replicas on one
        # host may share --cache-dir, and must not delete each other's copies.
        if folder is not None:
            os.makedirs(folder, exist_ok=True)
        self.folder = os.path.abspath(tempfile.mkdtemp(prefix=f"movierec-cache-{os.getpid()}-", dir=folder))

    def copy(self, version: int, remote: str, fingerprint: str) -> str:
        try:
            complete = exists(join(remote, artifact_format.METADATA_FILE))
        except Exception as exc:
            raise RootUnavailable(f"the model root could not be read: {exc}") from exc
        if not complete:
            raise artifact_format.ArtifactError(
                f"{artifact_format.METADATA_FILE} is missing (the version is not completely published yet)")
        local = os.path.join(self.folder, f"{version}-{fingerprint[:12]}")
        shutil.rmtree(local, ignore_errors=True)
        try:
            download(remote, local)
        except Exception as exc:  # a file missing from the copy is the manifest's to report, not this
            self.discard(local)
            raise RootUnavailable(f"copying the version from the model root failed: {exc}") from exc
        return local

    def discard(self, local: str) -> None:
        if os.path.dirname(local) == self.folder:
            shutil.rmtree(local, ignore_errors=True)

    def keep_only(self, local: str) -> None:
        for name in os.listdir(self.folder):
            if os.path.join(self.folder, name) != local:
                shutil.rmtree(os.path.join(self.folder, name), ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class ModelRegistry:
    def __init__(self, model_root: str, *, poll_seconds: float = 1.0, pinned_version: int | None = None,
                 replica_id: str | None = None, loader=validate_version, cache_dir: str | None = None):
        self.model_root = model_root
        self._cache = None if is_local(model_root) else VersionCache(cache_dir)
        self._validate = loader
        self.poll_seconds = poll_seconds
        # --version holds this replica alone and wins over the model root's pin,
        # which every replica reads at each poll (see poll_once).
        self._version_flag = pinned_version
        self._root_pin: int | None = None  # as last read
        self._pin_problem = ""
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
            except Exception:  # a read-only or unreachable root: the marker ages out instead
                pass
        if self._cache is not None:
            self._cache.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # the watcher must outlive any surprise
                log.exception("model poll failed")
            self._stop.wait(self.poll_seconds)

    def poll_once(self) -> None:
        try:
            versions = list_versions(self.model_root)
        except RootUnreachable:
            versions = []
        self._note_root_visibility(bool(versions))
        with self._lock:
            for v in versions:
                self._versions.setdefault(v, VersionInfo(version=v, state=AVAILABLE))
        try:
            if self._read_root_pin():
                if self.pinned_version is not None:
                    self._follow_pin(self.pinned_version, versions)
                else:
                    self._follow_newest(versions)
        except RootUnreachable:  # a folder could not be listed: nothing can be concluded until the next poll
            pass
        self._refresh_marker()  # at once after a swap, so ListVersions' served_by and retention see it

    def _read_root_pin(self) -> bool:
        """Reads the model root's pin; False when it cannot be read, and nothing should change."""
        if self._version_flag is not None:
            return True  # this replica's own pin wins; the root's is not consulted
        try:
            pin = read_pin(self.model_root)
        except Exception as exc:  # unreachable store or damaged file: keep serving what is served, do not guess
            problem = str(exc) if isinstance(exc, PinDamaged) else f"{type(exc).__name__} reading the pin"
            self._note_pin_problem(f"the model root's pin cannot be read: {problem}", error=str(exc))
            return False
        if pin != self._root_pin:
            event(log, "model root pin changed", pinned_version=pin, previous=self._root_pin)
            self._root_pin = pin
        return True

    def _follow_pin(self, pinned: int, versions: list[int]) -> None:
        """Serves the pinned version, whether older or newer than the current one; on any failure keeps the current."""
        current = self._current
        if current is not None and current.version == pinned:
            self._note_pin_problem("")
            return
        keeps = f"version {current.version} keeps serving" if current else "nothing is served until it can be"
        if pinned not in versions:
            self._note_pin_problem(f"pinned version {pinned} is not in the model root; {keeps}")
            return
        path = version_dir(self.model_root, pinned)
        fingerprint = folder_fingerprint(path)
        if fingerprint is None:
            return  # unreadable right now: try again next poll
        info = self._versions[pinned]
        if not (info.state == REJECTED and info.fingerprint == fingerprint):
            outcome = self._try_load(pinned, path, fingerprint)
            if outcome is not False:  # serving it, or the root was unreachable (the next poll retries)
                if outcome:
                    self._note_pin_problem("")
                return
        self._note_pin_problem(f"pinned version {pinned} was rejected ({self._versions[pinned].reason}); {keeps}")

    def _note_pin_problem(self, problem: str, **fields) -> None:
        """Keeps the problem for GetModelStatus and logs it once, not once per poll."""
        if problem != self._pin_problem:
            self._pin_problem = problem
            if problem:
                event(log, "pin not followed", logging.WARNING, problem=problem, **fields)

    def _follow_newest(self, versions: list[int]) -> None:
        """Serves the newest valid version; never goes back to an older one than the current."""
        self._note_pin_problem("")
        current = self._current
        for v in sorted(versions, reverse=True):
            if current is not None and v <= current.version:
                break
            path = version_dir(self.model_root, v)
            fingerprint = folder_fingerprint(path)
            if fingerprint is None:
                break  # unreadable right now: try again next poll rather than fall back to older versions
            info = self._versions[v]
            if info.state == REJECTED and info.fingerprint == fingerprint:
                continue  # already refused as it is
            outcome = self._try_load(v, path, fingerprint)
            if outcome is not False:
                break  # served, or the root is unreachable (None): either way, not an older version now

    def _try_load(self, version: int, path: str, fingerprint: str) -> bool | None:
        """True: now serving; False: rejected (an older version may be tried); None: the root was unreachable."""
        self._set_state(version, LOADING, fingerprint=fingerprint)
        started = time.monotonic()
        local = path
        try:
            if self._cache is not None:
                local = self._cache.copy(version, path, fingerprint)
            validated = self._validate(local)
            after = folder_fingerprint(path)
            if after is None:
                raise RootUnavailable("the model root could not be read after validation")
            if after != fingerprint:
                raise artifact_format.ArtifactError("the folder changed while it was validated; "
                                                    "it will be checked again")
            retriever = warmed_retriever(validated, local)
        except (RootUnavailable, RootUnreachable) as exc:  # says nothing about the version: retry at the next poll
            self._set_state(version, AVAILABLE, reason=f"{exc}; will retry", fingerprint=fingerprint)
            event(log, "version not loaded: model root unreachable", logging.WARNING, version=version,
                  reason=str(exc))
            prometheus_metrics.model_reload_failed("unreachable")
            if self._cache is not None:
                self._cache.discard(local)
            return None
        except Exception as exc:
            reason = str(exc) if isinstance(exc, artifact_format.ArtifactError) else f"{type(exc).__name__}: {exc}"
            self._set_state(version, REJECTED, reason=reason, fingerprint=fingerprint)
            event(log, "version rejected", logging.WARNING, version=version, reason=reason)
            prometheus_metrics.model_reload_failed("rejected")
            if self._cache is not None:
                self._cache.discard(local)
            return False
        if self._cache is not None:
            self._cache.keep_only(local)
        metadata = validated.metadata
        load_seconds = round(time.monotonic() - started, 3)
        model = LoadedModel(version=version, retriever=retriever, metadata=metadata, loaded_at=time.time(),
                            serving={**serving_facts(retriever, validated), "serving_load_seconds": load_seconds})
        previous = self._current
        self._current = model  # the swap: one reference assignment
        with self._lock:
            if previous is not None and previous.version in self._versions:
                self._versions[previous.version].state = RETIRED
        self._set_state(version, SERVING, fingerprint=fingerprint, model_kind=model.model_kind,
                        metrics=dict(metadata.metrics))
        event(log, "version serving", version=version, previous=previous.version if previous else None,
              model_kind=model.model_kind, backend=retriever.top_k.name, movies=retriever.num_items,
              ranked_users=retriever.rankings.num_users, load_seconds=load_seconds,
              **{name: value for name, value in validated.smoke.items()})
        prometheus_metrics.model_loaded(version, load_seconds)
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
                event(log, "model root shows no versions (empty or unreachable); serving continues on the loaded one",
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
