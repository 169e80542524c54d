"""Nothing a killed server or tool started outlives it (movierec_common.launch): what it leaves on disk is
found and removed by the next one, and the processes a tool started are reaped by its watchdog."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import psutil
import pytest

from movierec_common.launch import owned_prefix, remove_orphaned_folders
from tests.servers import describe, still_running


def test_only_folders_of_servers_that_no_longer_run_are_removed(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    prefix = "movierec-handoff-"
    dead = tmp_path / f"{owned_prefix(prefix, dead_pid)}abc"
    mine = tmp_path / f"{owned_prefix(prefix)}def"
    other_kind = tmp_path / f"movierec-warm-{dead_pid}-ghi"
    not_a_pid = tmp_path / f"{prefix}x-jkl"
    for folder in (dead, mine, other_kind, not_a_pid):
        folder.mkdir()
        (folder / "1.npy").write_bytes(b"\0" * 10)
    assert remove_orphaned_folders(str(tmp_path), prefix) == [str(dead)]
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in (mine, other_kind, not_a_pid))


REAPED_TOOL = """
import os, subprocess, sys, time
from movierec_common import launch

launch.reap_at_exit(sys.argv[1])
noted = subprocess.Popen(["sleep", "120"], env={"PATH": os.environ["PATH"]})  # no tag: found as a descendant
time.sleep(2.5)  # the watchdog looks once a second
tagged = subprocess.Popen(["sleep", "120"])  # too new to be noted: found by the tag it inherits
print(noted.pid, tagged.pid, launch._reapers[0].pid, flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="the watchdog reads /proc")
def test_what_a_tool_started_ends_when_the_tool_is_killed(tmp_path):
    """reap_at_exit: a tool killed with SIGKILL leaves neither the processes it started nor its folder."""
    folder = tmp_path / "tool-temp"
    folder.mkdir()
    tool = subprocess.Popen([sys.executable, "-c", REAPED_TOOL, str(folder)], stdout=subprocess.PIPE, text=True)
    started: list[psutil.Process] = []
    try:
        line = tool.stdout.readline()
        started = [psutil.Process(int(pid)) for pid in line.split()]
        assert len(started) == 3, line
        tool.send_signal(signal.SIGKILL)
        tool.wait()
        left = still_running(started, timeout=10)
        assert left == [], [describe(p) for p in left]
        assert not folder.exists()
    finally:
        tool.kill()
        tool.wait()
        for process in still_running(started, timeout=0):
            process.kill()


THREAD_PRIORITIES = """
import os, threading
from movierec_common import launch

started_before = threading.Event()
threading.Thread(target=started_before.wait, daemon=True).start()  # a thread that exists before the call
launch.yield_cpu(19, idle=True)
started_after = threading.Event()
threading.Thread(target=started_after.wait, daemon=True).start()  # one started after it
for tid in sorted(int(t) for t in os.listdir("/proc/self/task")):
    print(tid, os.getpriority(os.PRIO_PROCESS, tid), os.sched_getscheduler(tid) == os.SCHED_IDLE)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread priorities are Linux's")
def test_a_helper_yields_the_cpu_in_every_thread_it_runs():
    """yield_cpu: nice 19 and SCHED_IDLE for the threads running already, not just the caller, and for those
    started later (os.nice alone would leave the earlier thread at nice 0, competing with the server)."""
    run = subprocess.run([sys.executable, "-c", THREAD_PRIORITIES], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    threads = [line.split() for line in run.stdout.splitlines()]
    assert len(threads) == 3, run.stdout
    assert all(nice == "19" and idle == "True" for _, nice, idle in threads), run.stdout


THREAD_CORES = """
import json, os, sys, threading
from movierec_common import launch

started_before = threading.Event()
threading.Thread(target=started_before.wait, daemon=True).start()  # a thread that exists before the call
chosen = launch.confine_to_last_cpus(int(sys.argv[1]))
started_after = threading.Event()
threading.Thread(target=started_after.wait, daemon=True).start()  # one started after it
print(json.dumps({"chosen": sorted(chosen),
                  "threads": [sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")]}))
"""


def _cores_after_confining(count: int) -> dict:
    run = subprocess.run([sys.executable, "-c", THREAD_CORES, str(count)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="per-thread affinity is Linux's")
def test_a_helper_confined_to_its_last_core_keeps_every_thread_there_and_leaves_the_others_free():
    """confine_to_last_cpus(1): the threads running already and those started later run on the last core
    this process may use, and only there (a request thread woken elsewhere never waits for the helper);
    0, or a count that would leave no core free, changes nothing."""
    allowed = sorted(os.sched_getaffinity(0))
    one = _cores_after_confining(1)
    assert len(one["threads"]) == 3, one
    expected = [allowed[-1]] if len(allowed) > 1 else allowed
    if os.environ.get("CI") == "true":
        assert len(allowed) > 1, "CI's machine has two cores: this test must see a core left free"
    assert one["chosen"] == expected and all(cores == expected for cores in one["threads"]), one
    for count in (0, len(allowed)):
        unchanged = _cores_after_confining(count)
        assert unchanged["chosen"] == allowed and all(cores == allowed for cores in unchanged["threads"]), unchanged
