"""Processes around a movierec server: starting one and learning its port,
and making sure nothing a server starts outlives it.

Servers started with ``--port 0`` bind any free port and print
``... listening on HOST:PORT`` on stdout once they accept calls; tests,
benchmarks and scripts read that line instead of guessing free ports, so
parallel runs never collide.

A server killed with SIGKILL (an orchestrator, the OOM killer, ``kill -9``)
runs none of its clean-up, so each helper process it starts must notice on
its own that its server is gone (:func:`exit_with_parent`), and anything it
leaves on disk is named after the server's pid so that the next server can
remove it (:func:`remove_orphaned_folders`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

LISTENING = re.compile(r"listening on ([\w.\-\[\]:]+):(\d+)")


# Run by the child between fork and the server's own start (exec keeps the
# pid and the parent-death signal): SIGTERM when the launcher goes.
_END_WITH_LAUNCHER = """\
import ctypes, os, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, 15, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGTERM
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


class ServerProcess:
    """A server as a child process.

    ``end_with_launcher``: the server gets SIGTERM (a graceful stop) when the
    process that started it dies, even by SIGKILL, so a test run that is
    killed or whose fixture fails leaves no server behind. The signal comes
    when the launching *thread* ends (PR_SET_PDEATHSIG), so use it from a
    thread that outlives the server, such as pytest's main thread. Linux
    only; elsewhere the option does nothing.
    """

    def __init__(self, name: str, command: list[str], log_path: Path, env: dict | None = None,
                 cwd: Path | None = None, end_with_launcher: bool = False):
        self.name = name
        self.command = command
        self.end_with_launcher = end_with_launcher
        self.log_path = Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    target = address

    def start(self, timeout: float = 120.0) -> ServerProcess:
        log = open(self.log_path, "ab")
        command = self.command
        if self.end_with_launcher:
            command = [sys.executable, "-c", _END_WITH_LAUNCHER, str(os.getpid()), *command]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=self.env, cwd=self.cwd)
        found: list[int] = []

        def read_stdout():
            for raw in self.process.stdout:
                log.write(raw)
                log.flush()
                match = LISTENING.search(raw.decode("utf-8", "replace"))
                if match and not found:
                    found.append(int(match.group(2)))

        threading.Thread(target=read_stdout, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.name} did not start within {timeout}s; see {self.log_path}")
            time.sleep(0.05)
        self.port = found[0]
        return self

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within timeout; returns the exit code."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode if self.process else 0

    stop = terminate

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 60) -> str:
        """The end of the server's log, for a failure message."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(no log at {self.log_path}: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


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
    return prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(int(signum)), 0, 0, 0) == 0


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


def init_helper(parent_pid: int, niceness: int = 0) -> None:
    """A ProcessPoolExecutor initializer for a server's helper: it ends with the
    server, and a positive ``niceness`` yields the CPU to the server's own work.

    It lives here, in a module that imports only the standard library, because
    a pool pickles its initializer by reference: the helper imports this
    module before it runs the initializer, and a heavier module (numpy, faiss)
    would widen the window in which a server that dies at start-up leaves the
    helper running for seconds.
    """
    exit_with_parent(parent_pid)
    if niceness:
        os.nice(niceness)


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

# A watchdog that outlives its parent on purpose. While the parent lives it
# notes, every second, the parent's descendants (pid and start time, from
# /proc). When its stdin closes (the parent exited, however), it SIGKILLs
# every noted process still running, and every process whose environment
# carries the tag (one started after the last look), then removes the folder.
# Both, because neither is enough alone: a process re-parented to init is no
# longer anyone's descendant, and a process that sets its own title (Ray's
# ``ray::DashboardAgent``) may overwrite the memory /proc shows as its
# environment. Standard library only: a bare interpreter (~10 MB) that wakes
# once a second.
_REAPER = """\
import os, select, shutil, signal, sys, time
parent, tag, folder, variable = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
me, marker = os.getpid(), f"{variable}={tag}\\0".encode()

def processes():
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as handle:
                    fields = handle.read().rpartition(b")")[2].split()
                found[int(name)] = (int(fields[1]), fields[19])  # ppid, start time
            except (OSError, IndexError, ValueError):
                pass
    return found

def descendants(table):
    children = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, [parent]
    while todo:
        for child in children.get(todo.pop(), []):
            if child != me and child not in found:
                found[child] = table[child][1]
                todo.append(child)
    return found

noted = {}
while True:
    ready, _, _ = select.select([sys.stdin], [], [], 1.0)
    if ready and not os.read(sys.stdin.fileno(), 4096):
        break
    noted.update(descendants(processes()))
for _ in range(3):
    table = processes()
    for pid in table:
        if pid in (me, parent):
            continue
        doomed = noted.get(pid) == table[pid][1]
        if not doomed:
            try:
                with open(f"/proc/{pid}/environ", "rb") as handle:
                    doomed = marker in handle.read() + b"\\0"
            except OSError:
                pass
        if doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    time.sleep(0.2)
if folder:
    shutil.rmtree(folder, ignore_errors=True)
"""
_reapers: list[subprocess.Popen] = []  # their stdin must stay open as long as this process lives


def reap_at_exit(folder: str | None = None) -> str:
    """Makes sure the processes this one starts from now on, and everything they start, end when it does.

    For tools that start processes which do not end with their parent: a
    local Ray's agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``)
    outlive a trainer killed with SIGKILL, re-parented to init with ~100 MB
    each, as upstream Ray issue #52385 describes. A small watchdog process
    (see _REAPER) notes this process's descendants while it lives and, once
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
        [sys.executable, "-S", "-c", _REAPER, str(os.getpid()), tag, folder or "", REAP_TAG_VARIABLE],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment,
        start_new_session=True))  # a terminal's Ctrl-C for the parent's group does not stop the clean-up
    os.environ[REAP_TAG_VARIABLE] = tag
    return tag
