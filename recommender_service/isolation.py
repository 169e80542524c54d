"""Process isolation for loading: validation runs in one long-lived helper
process (:class:`IsolatedLoader`, which says why), and its result crosses
back as files the serving process maps (:class:`HandoffPickler`,
:class:`HandoffUnpickler`). Also here: what keeps that helper light on a busy
machine (lowest CPU priority, a core left to the request threads, freed heap
handed back between versions) and how the server gets rid of it, and of what
a killed one left on disk.
"""

from __future__ import annotations

import ctypes
import gc
import glob
import io
import logging
import multiprocessing
import os
import pickle
import shutil
import tempfile
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import IO, Any

import faiss
import numpy as np

from movierec_common import launch
from movierec_common.artifact import ArtifactError, ModelArtifact, VersionMetadata, write_version
from movierec_common.logs import event
from recommender_service.rankings import RANKING_BUDGET_BYTES
from recommender_service.validation import ValidatedVersion, validate_version

log = logging.getLogger(__name__)

# The loader runs at the lowest CPU priority, every thread of it, under
# SCHED_IDLE (launch.yield_cpu): a reload may take a little longer, but it
# competes as little as the kernel allows with callers on a busy machine.
# What it still costs them is the CPU it spends while they are served
# (measured at a million movies: calls in the half-seconds when the loader
# burnt a fifth of a core or more had a p99 of 6-8 ms, against 1.5 ms in the
# same reloads' other half-seconds). It stays in its server's session on
# purpose: in a session of its own (a scheduling group of its own) it got
# more CPU while calls were served, and their p99 across a reload rose
# (4.1 against 1.3 ms, medians of 3 interleaved reloads on a busy machine).
LOADER_NICENESS = 19
LOADER_IDLE = True
# ... and on one core, the last (launch.confine_to_last_cpus says why): left
# free to move, the loader ran on whichever core a request thread was about to
# wake on, which then waited for it (a tick, up to 4 ms here). A server's
# --loader-cpus changes it; 0 lets the loader use every core.
LOADER_CPUS = 1
# What a loader leaves in the temp folder while it works, named after its
# server's pid (launch.owned_prefix) so that a server killed meanwhile leaves
# nothing the next one does not remove.
HANDOFF_PREFIX, WARM_UP_PREFIX = "movierec-handoff-", "movierec-warm-"


def _configure_loader_process() -> None:
    """Runs in the helper before each task: its batched index searches use the
    cores it is kept on, or, free to move, every core but one, which stays with
    the request threads even while it is busy.

    Not in the pool's initializer, which must stay light (see launch.init_helper).
    """
    try:  # the server's cores, and those of them this helper is kept on
        servers, mine = len(os.sched_getaffinity(os.getppid())), len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        servers = mine = os.cpu_count() or 1
    faiss.omp_set_num_threads(mine if mine < servers else max(1, servers - 1))


# Arrays at least this large cross from the helper as files the serving
# process maps, not as pickled bytes.
HANDOFF_MIN_BYTES = 1 << 16


class HandoffPickler(pickle.Pickler):
    """Writes each large numpy array to its own .npy file and pickles only its name.

    Unpickling a 100 MB array holds the GIL for ~0.1 s in the serving process
    (measured), which request threads feel; mapping a file holds it for
    microseconds, and its pages are read on first touch.
    """

    def __init__(self, file: IO[bytes], folder: str):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.folder = folder
        self.count = 0
        # One array referenced twice (a catalogue's history that is its seen
        # list) crosses once and arrives as one mapping.
        self._written: dict[int, str] = {}

    def persistent_id(self, obj: Any) -> str | None:
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
    """Maps each array :class:`HandoffPickler` wrote to a file (read-only), then unlinks the file."""

    def __init__(self, file: IO[bytes]):
        super().__init__(file)
        self._mapped: dict[str, np.ndarray] = {}

    def persistent_load(self, path: str) -> np.ndarray:
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
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _warm_up() -> None:
    """Runs in the helper: pays TensorFlow's one-time costs by validating a tiny version."""
    rng = np.random.default_rng(0)
    tiny = ModelArtifact(
        user_ids=np.array(["1", "2"], dtype=object), user_vectors=rng.normal(size=(2, 4)).astype(np.float32),
        movie_ids=np.array([1, 2, 3], dtype=np.int64), titles=np.array(["a", "b", "c"], dtype=object),
        item_vectors=rng.normal(size=(3, 4)).astype(np.float32), seen_indptr=np.array([0, 1, 1], dtype=np.int64),
        seen_indices=np.array([0], dtype=np.int32), popularity=np.ones(3, dtype=np.float32))
    _configure_loader_process()
    folder = tempfile.mkdtemp(prefix=launch.owned_prefix(WARM_UP_PREFIX, os.getppid()))
    try:
        path = os.path.join(folder, "1")
        write_version(path, tiny, VersionMetadata(model_kind="warm-up"))
        validate_version(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _release_freed_memory()


def _log_warm_up_failure(future: Future[None]) -> None:
    error = None if future.cancelled() else future.exception()
    if error is not None:
        event(log, "loader warm-up failed; the first version will pay the start-up cost", logging.WARNING,
              error=f"{type(error).__name__}: {error}")


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

    def __init__(self, ranking_budget_bytes: int = RANKING_BUDGET_BYTES, cpus: int = LOADER_CPUS):
        self._pool: ProcessPoolExecutor | None = None
        self.ranking_budget_bytes = ranking_budget_bytes
        self.cpus = cpus  # the helper's cores: the last ``cpus`` of the server's, or every one when 0

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

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # The helper ends with this process (launch.exit_with_parent), and so
            # does multiprocessing's resource tracker, which exits when the last
            # holder of its pipe (this process, the helper) is gone. The pool is
            # made on the main thread at start() and, after a crash, on the watcher
            # thread: both live as long as the server, as PR_SET_PDEATHSIG requires.
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=launch.init_helper,
                                             initargs=(os.getpid(), LOADER_NICENESS, LOADER_IDLE, self.cpus))
        return self._pool

    def __call__(self, path: str) -> ValidatedVersion:
        """Validates the version at ``path`` in the helper; raises ArtifactError (also when the helper died)."""
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
            raise ArtifactError("the loader process died while loading this version") from exc
        try:
            validated: ValidatedVersion = HandoffUnpickler(io.BytesIO(data)).load()
            return validated
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
