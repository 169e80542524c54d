"""The watchdog :func:`movierec_common.launch.reap_at_exit` starts: ``python -m movierec_common.reaper``.

It outlives its parent on purpose. While the parent lives it notes, every
second, the parent's descendants (pid and start time, from /proc). When its
stdin closes (the parent exited, however), it SIGKILLs every noted process
still running, and every process whose environment carries the tag (one
started after the last look), then removes the folder. Both, because neither
is enough alone: a process re-parented to init is no longer anyone's
descendant, and a process that sets its own title (Ray's
``ray::DashboardAgent``) may overwrite the memory /proc shows as its
environment.

Standard library only, and nothing imported from the rest of movierec: a bare
interpreter that wakes once a second. Linux only (it reads /proc).

Arguments: the parent's pid, the tag, the folder to remove ("" for none) and
the name of the environment variable that carries the tag.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
import time

# pid -> (parent pid, start time in clock ticks since boot: with the pid, names one process for good)
ProcessTable = dict[int, tuple[int, bytes]]


def processes() -> ProcessTable:
    """Every process /proc shows now."""
    found: ProcessTable = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as handle:
                    fields = handle.read().rpartition(b")")[2].split()
                found[int(name)] = (int(fields[1]), fields[19])  # ppid, start time
            except (OSError, IndexError, ValueError):
                pass
    return found


def descendants(table: ProcessTable, parent: int, me: int) -> dict[int, bytes]:
    """``parent``'s descendants in ``table`` (except ``me``), with their start times."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, bytes] = {}
    todo = [parent]
    while todo:
        for child in children.get(todo.pop(), []):
            if child != me and child not in found:
                found[child] = table[child][1]
                todo.append(child)
    return found


def watch(parent: int, me: int) -> dict[int, bytes]:
    """Notes ``parent``'s descendants once a second until stdin closes (the parent exited); returns them."""
    noted: dict[int, bytes] = {}
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], 1.0)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            return noted
        noted.update(descendants(processes(), parent, me))


def reap(noted: dict[int, bytes], marker: bytes, parent: int, me: int) -> None:
    """SIGKILLs the noted processes still running and every process whose environment holds ``marker``;
    three passes, for processes started while the first ones were being killed."""
    for _ in range(3):
        table = processes()
        for pid in table:
            if pid in (me, parent):
                continue
            doomed = noted.get(pid) == table[pid][1]
            if not doomed:
                try:
                    with open(f"/proc/{pid}/environ", "rb") as handle:
                        doomed = marker in handle.read() + b"\0"
                except OSError:
                    pass
            if doomed:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        time.sleep(0.2)


def main(argv: list[str]) -> None:
    parent, tag, folder, variable = int(argv[0]), argv[1], argv[2], argv[3]
    me = os.getpid()
    reap(watch(parent, me), f"{variable}={tag}\0".encode(), parent, me)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
