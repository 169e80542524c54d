"""The model root's lease (movierec_common.root_lease): two trainers on one root, on a local folder
and on a real S3 API (moto on loopback). A "trainer" here is a RootLease; a crashed holder is a real
process killed with SIGKILL, and a holder on another machine is a lease record naming another host."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from movierec_common import model_root
from movierec_common.root_lease import LEASE_FILE, RootLease, RootLeaseHeld, RootLeaseLost, confirm

HOLD_AND_WAIT = """
import sys
from movierec_common.root_lease import RootLease
lease = RootLease(sys.argv[1], ttl=60)
lease.acquire()
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "models")
        return
    from tests.s3 import s3_server

    with s3_server("leases"):
        yield "s3://leases/root"


def test_a_second_trainer_is_refused_with_the_holder_named_until_the_first_releases(root):
    first = RootLease(root, ttl=30)
    first.acquire()
    second = RootLease(root, ttl=30)
    try:
        named = rf"held by trainer pid \d+ on host .* \(lease {first.holder['holder']}"
        with pytest.raises(RootLeaseHeld, match=named):
            second.acquire(wait_seconds=0)
        # Waiting: it gets the root as soon as the first lets go.
        got = threading.Event()
        waiter = threading.Thread(target=lambda: (second.acquire(wait_seconds=30), got.set()))
        waiter.start()
        first.release()
        waiter.join(35)
        assert got.is_set()
        assert json.loads(model_root.read_bytes(model_root.join(root, LEASE_FILE)))["holder"] == \
            second.holder["holder"]
        confirm(root)  # the publisher's check passes for the holder
    finally:
        second.release()
        first.release()
    assert not model_root.exists(model_root.join(root, LEASE_FILE))


def test_a_live_holder_keeps_the_lease_past_its_ttl_by_renewing(root):
    first = RootLease(root, ttl=1.5)
    first.acquire()
    try:
        deadline = time.monotonic() + 20
        while first.renewals < 4 and time.monotonic() < deadline:  # two ttl's worth of renewals
            time.sleep(0.05)
        assert first.renewals >= 4
        with pytest.raises(RootLeaseHeld):
            RootLease(root, ttl=1.5).acquire(wait_seconds=0)
    finally:
        first.release()


def test_a_crashed_holder_on_this_host_is_taken_over_at_once(root):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_WAIT, root], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RootLeaseHeld, match=f"pid {holder.pid} "):
            RootLease(root).acquire(wait_seconds=0)
    finally:
        holder.kill()
        holder.wait()
    lease = RootLease(root)
    lease.acquire(wait_seconds=0)  # its ttl is 60 s: taken because the holder's process is gone
    lease.release()


def test_a_holder_elsewhere_that_stops_renewing_expires_by_the_stores_clock(root):
    record = {"holder": "elsewhere-1", "host": "another-machine", "pid": 1, "ttl": 1.0,
              "written": time.time() + 3600}  # its clock is an hour ahead: that must not matter
    model_root.write_bytes(model_root.join(root, LEASE_FILE), json.dumps(record).encode())
    with pytest.raises(RootLeaseHeld, match="on host another-machine"):
        RootLease(root).acquire(wait_seconds=0)
    lease = RootLease(root)
    lease.acquire(wait_seconds=10)
    lease.release()


def test_a_holder_whose_lease_was_taken_over_stops_publishing(root):
    first = RootLease(root, ttl=30)
    first.acquire()
    try:
        first._stop.set()  # as if it had hung: it renews no more
        first._thread.join(5)
        record = {"holder": "usurper", "host": "another-machine", "pid": 1, "ttl": 30}
        model_root.write_bytes(model_root.join(root, LEASE_FILE), json.dumps(record).encode())
        with pytest.raises(RootLeaseLost, match="usurper"):
            confirm(root)
    finally:
        first.release()
    assert json.loads(model_root.read_bytes(model_root.join(root, LEASE_FILE)))["holder"] == "usurper"
