"""Making sure nothing a movierec server starts outlives it.

A server killed with SIGKILL (an orchestrator, the OOM killer, ``kill -9``)
runs none of its clean-up, so each helper process it starts must notice on
its own that its server is gone (:func:`exit_with_parent`), and anything it
leaves on disk is named after the server's pid so that the next server can
remove it (:func:`remove_orphaned_folders`). A tool whose helpers start
processes of their own that do not end with them (a local Ray) has them
reaped by a watchdog (:func:`reap_at_exit`, :mod:`movierec_common.reaper`).

Standard library only, and light on purpose (see :func:`init_helper`).
Starting a server as a child process, for tests and benchmarks, is
:mod:`movierec_common.server_process`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

# --------------------------------------------------------------------------- helpers end with their server

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_SECONDS = 0.5


def _request_parent_death_signal(signum: int) -> bool:
    """Asks the kernel for ``signum`` when the parent goes (Linux only); False where that is not available."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):  # not Linux
        return False
    status: int = prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(int(signum)), 0, 0, 0)
    return status == 0


def exit_with_parent(parent_pid: int, poll_seconds: float = PARENT_POLL_SECONDS) -> None:
    """Ends the calling process when ``parent_pid``, its parent, ends, however that ends.

    For helper processes: a helper left behind by a killed server is
    re-parented to init and keeps its memory (a loader holds TensorFlow, some
    600 MB) for good. Two mechanisms, because neither covers every case:

    * ``PR_SET_PDEATHSIG`` (Linux): the kernel sends SIGKILL the moment the
      parent dies. It is tied to the parent's *thread* that started this
      process, not to the whole parent process, so servers start their helpers
      from threads that live as long as they do.
    * A daemon thread that checks every ``poll_seconds`` whether this process
      has been re-parented, for systems without prctl and as a second line.

    Call it first thing in the helper (e.g. as a ProcessPoolExecutor
    initializer, from a module that imports nothing heavy): a parent that died
    before the call is caught by the check right after the prctl.
    """
    _request_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def init_helper(parent_pid: int, niceness: int = 0, idle: bool = False, cpus: int = 0) -> None:
    """A ProcessPoolExecutor initializer for a server's helper: it ends with the
    server, and yields the CPU to the server's own work (see :func:`yield_cpu`),
    on its last ``cpus`` cores only when ``cpus`` > 0 (see :func:`confine_to_last_cpus`).

    It lives here, in a module that imports only the standard library, because
    a pool pickles its initializer by reference: the helper imports this
    module before it runs the initializer, and a heavier module (numpy, faiss)
    would widen the window in which a server that dies at start-up leaves the
    helper running for seconds.
    """
    exit_with_parent(parent_pid)
    yield_cpu(niceness, idle)
    if cpus > 0:
        confine_to_last_cpus(cpus)


def yield_cpu(niceness: int, idle: bool = False) -> None:
    """Lowers the CPU priority of every thread of this process, and so of every thread it starts later.

    Linux keeps a nice value and a scheduling policy per *thread*, and a new
    thread inherits them from the thread that starts it: ``os.nice`` in one
    thread leaves the threads already running where they were (a helper's
    exit-with-parent watcher stayed at nice 0), so each is set here.

    ``idle`` adds SCHED_IDLE: a thread that runs only on CPU time no other
    thread of its scheduling group wants (weight 3 against nice 19's 15) and
    that gives way to any normal thread woken on its core, where a nice-19
    thread may finish its time slice first. It does not always give way at
    once (up to a tick here), which is why a helper is also kept off the
    request threads' cores (:func:`confine_to_last_cpus`). Elsewhere
    than Linux, the process's nice value is raised instead.
    """
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: one nice value for the process
        if niceness:
            os.nice(niceness)
        return
    for tid in threads:
        try:
            if niceness:
                os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), niceness))
            if idle:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except ProcessLookupError:  # a thread that ended meanwhile
            continue


def confine_to_last_cpus(count: int) -> set[int]:
    """Keeps every thread of this process, and every thread it starts later, on
    the last ``count`` of the cores it may use; returns the cores it runs on.

    Why a lowest-priority helper needs this: a request thread woken on a core
    where a SCHED_IDLE thread runs still waits for that core, on this kernel
    until the next tick (4 ms at HZ 250), and a helper free to move runs on
    whichever core a request thread is about to wake on (the kernel counts a
    core running only SCHED_IDLE work as idle, and pulls work onto cores the
    server's threads just left). Measured with a 1M-movie server at one call
    in flight, beside one spinning SCHED_IDLE process: p99 4.2-4.4 ms when it
    moved freely, 1.6 ms kept on the last core, 0.9 ms without it. Nothing
    happens when ``count`` would leave no core free of the helper, or where
    per-thread affinity is not Linux's.
    """
    try:
        allowed = sorted(os.sched_getaffinity(0))
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except (AttributeError, OSError):
        return set()
    if count <= 0 or count >= len(allowed):
        return set(allowed)
    chosen = set(allowed[-count:])
    for tid in threads:  # affinity is per thread, and a new thread inherits its creator's
        try:
            os.sched_setaffinity(tid, chosen)
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
    return chosen


def owned_prefix(prefix: str, pid: int | None = None) -> str:
    """``prefix`` plus the owning server's pid, for temp folders :func:`remove_orphaned_folders` can find."""
    return f"{prefix}{os.getpid() if pid is None else pid}-"


def remove_orphaned_folders(directory: str, prefix: str) -> list[str]:
    """Removes ``<directory>/<prefix><pid>-*`` folders whose server (pid) no longer runs; returns them.

    What a server killed with SIGKILL leaves on disk (a loader's hand-over
    files, a copy of a version) is removed by the next server that starts
    with the same folders. A reused pid only keeps a folder a little longer.
    """
    removed = []
    for path in glob.glob(os.path.join(glob.escape(directory), glob.escape(prefix) + "*")):
        owner = os.path.basename(path)[len(prefix):].partition("-")[0]
        if not owner.isdigit() or _running(int(owner)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# --------------------------------------------------------------------------- what a tool starts, reaped

REAP_TAG_VARIABLE = "MOVIEREC_REAP_TAG"

_reapers: list[subprocess.Popen[bytes]] = []  # their stdin must stay open as long as this process lives


def reap_at_exit(folder: str | None = None) -> str:
    """Makes sure the processes this one starts from now on, and everything they start, end when it does.

    For tools that start processes which do not end with their parent: a
    local Ray's agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``)
    outlive a trainer killed with SIGKILL, re-parented to init with ~100 MB
    each, as upstream Ray issue #52385 describes. A small watchdog process
    (:mod:`movierec_common.reaper`) notes this process's descendants while it lives and, once
    it has exited, kills those still running and any process carrying the
    tag put in this process's environment (which everything started
    afterwards inherits: Ray passes its environment on), then removes
    ``folder`` (the tool's temp folder). The watchdog itself exits then.
    Linux only (it reads /proc); elsewhere it does nothing. Returns the tag.
    """
    import uuid

    tag = uuid.uuid4().hex
    if not os.path.isdir("/proc"):
        return tag
    environment = {k: v for k, v in os.environ.items() if k != REAP_TAG_VARIABLE}
    _reapers.append(subprocess.Popen(
        [sys.executable, "-m", "movierec_common.reaper", str(os.getpid()), tag, folder or "", REAP_TAG_VARIABLE],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment,
        start_new_session=True))  # a terminal's Ctrl-C for the parent's group does not stop the clean-up
    os.environ[REAP_TAG_VARIABLE] = tag
    return tag
