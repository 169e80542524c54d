"""One trainer per model root, enforced: a lease object in the root.

A trainer deletes things in its root (stale staging at start, failed uploads,
retention) and numbers versions from a listing, so two trainers on one root (a
rolling deploy starting the new one before the old one stops) would delete
each other's uploads and could pick one number twice. The lease makes the
second one wait, or refuse saying who holds the root.

* **Where**: ``<root>/.trainer-lease.json`` names its holder (host, pid, an id).
* **Taking it** is a conditional create: on an object store a PUT with
  ``If-None-Match: *`` (s3fs passes it through as ``mode="create"``); on a local
  folder an exclusive ``flock`` on ``.trainer-lease.lock`` around
  read-compare-write, which makes every step a compare-and-swap.
* **Keeping it**: the holder rewrites it every ``ttl / 3`` seconds, again
  conditionally (``If-Match`` its own last ETag; locally, its own last bytes),
  so a holder that lost it finds out at its next renewal and publishes nothing more
  (:func:`confirm`, called by the publisher just before a version appears).
* **Expiry**: a lease not rewritten within its ``ttl`` by the *store's* clock
  (``model_root.store_now``) may be taken over, conditionally on it being the
  one judged expired. A holder on this very host whose process is gone has
  crashed, and its lease is taken over at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from movierec_common import model_root
from movierec_common.logs import event

log = logging.getLogger(__name__)

LEASE_FILE = ".trainer-lease.json"
LOCK_FILE = ".trainer-lease.lock"
DEFAULT_TTL_SECONDS = 30.0

_HELD: dict[str, RootLease] = {}  # root -> the lease this process holds on it


class RootLeaseHeld(Exception):
    """Another trainer holds the root; the message says who, and when its lease would expire."""


class RootLeaseLost(RuntimeError):
    """This trainer's lease was taken over (it could not renew it within its ttl): it must not publish."""


class _Taken(Exception):
    """A conditional write found the lease changed since it was read."""


@dataclass(frozen=True)
class _Reading:
    raw: bytes
    stamp: str        # what a conditional write compares: the ETag, or locally the bytes themselves
    modified: float   # by the store's clock


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not mistaken for it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rpartition(b")")[2].split()[19].decode()
    except (OSError, IndexError):
        return ""


class _Store:
    """The lease object's three conditional operations, on a local folder or an object store."""

    def __init__(self, root: str):
        self.root = root
        self.location = model_root.join(root, LEASE_FILE)
        self.local = model_root.is_local(root)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not self.local:
            yield
            return
        import fcntl

        base = model_root.local_path(self.root)
        os.makedirs(base, exist_ok=True)
        descriptor = os.open(os.path.join(base, LOCK_FILE), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # releases the lock

    def read(self) -> _Reading | None:
        fs, path = model_root.filesystem(self.location)
        try:
            with model_root.store_boundary("reading", self.location):
                info = fs.info(path)
                raw = bytes(fs.cat_file(path))
        except FileNotFoundError:
            return None
        stamp = raw.hex() if self.local else str(info.get("ETag"))
        return _Reading(raw, stamp, model_root.modified_at(info))

    def write(self, data: bytes, expected: str | None) -> str:
        """Creates the lease (``expected`` None) or replaces the one whose stamp is ``expected``; its new stamp.

        Raises _Taken when the lease is not as expected, RootUnreachable when the store cannot answer.
        """
        if self.local:
            with self._locked():
                current = self.read()
                if (current is None) != (expected is None) or (current and current.stamp != expected):
                    raise _Taken()
                model_root.write_bytes(self.location, data)
                return data.hex()
        fs, path = model_root.filesystem(self.location)
        condition: dict[str, Any] = {"mode": "create"} if expected is None else {"IfMatch": expected}
        try:
            with model_root.store_boundary("writing", self.location):
                try:
                    return str(fs.pipe_file(path, data, **condition)["ETag"])
                except FileExistsError:  # If-None-Match failed: someone holds it
                    raise _Taken() from None
        except model_root.RootUnreachable:
            current = self.read()  # an If-Match that failed arrives as a plain error: look
            if expected is not None and (current is None or current.stamp != expected):
                raise _Taken() from None
            raise

    def delete(self, expected: str) -> None:
        with self._locked():
            current = self.read()
            if current is not None and current.stamp == expected:
                model_root.remove_file(self.location)


class RootLease:
    """This process's claim on one model root (see the module docstring)."""

    def __init__(self, root: str, *, ttl: float = DEFAULT_TTL_SECONDS):
        self.root = root
        self.ttl = ttl
        self.holder = {"holder": uuid.uuid4().hex[:12], "host": socket.gethostname(), "pid": os.getpid(),
                       "pid_start": _process_start(os.getpid()), "ttl": ttl}
        self._store = _Store(root)
        self._stamp = ""
        self._renewals = 0
        self.lost = ""  # why this process no longer holds the lease; "" while it does
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def renewals(self) -> int:
        return self._renewals

    def _record(self) -> bytes:
        return json.dumps({**self.holder, "renewals": self._renewals, "written": time.time()}).encode()

    def acquire(self, wait_seconds: float = 0.0) -> None:
        """Takes the lease, waiting up to ``wait_seconds`` for its holder to release it or let it expire.

        Raises RootLeaseHeld naming the holder when it is still held after that.
        """
        deadline = time.monotonic() + wait_seconds
        announced = ""
        while True:
            holder = self._try_take()
            if not holder:
                break
            if time.monotonic() >= deadline:
                raise RootLeaseHeld(f"the model root {self.root} is held by {holder}; one trainer per root. "
                                    f"Stop that trainer, or wait for its lease to expire")
            if holder != announced:
                event(log, "waiting for the model root's lease", root=self.root, holder=holder)
                announced = holder
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        _HELD[self.root] = self
        self._thread = threading.Thread(target=self._renew_until_stopped, name="root-lease", daemon=True)
        self._thread.start()
        event(log, "model root lease taken", root=self.root, holder=self.holder["holder"], ttl=self.ttl)

    def _try_take(self) -> str:
        """"" when the lease is now ours, else who holds it."""
        current = self._store.read()
        if current is None:
            try:
                self._stamp = self._store.write(self._record(), None)
                return ""
            except _Taken:
                return "another trainer (it took the lease just now)"
        try:
            record = json.loads(current.raw)
            ttl = float(record.get("ttl", self.ttl))
        except (ValueError, TypeError, AttributeError):  # a damaged lease ages out like any other
            record, ttl = {}, self.ttl
        age = model_root.store_now(self.root) - current.modified
        if age > ttl or self._crashed_here(record):
            try:
                self._stamp = self._store.write(self._record(), current.stamp)
            except _Taken:
                return "another trainer (it took the expired lease just now)"
            event(log, "model root lease taken over", logging.WARNING, root=self.root, previous=record,
                  age_seconds=round(age, 1))
            return ""
        return (f"trainer pid {record.get('pid')} on host {record.get('host')} (lease {record.get('holder')}, "
                f"written {age:.0f}s ago by the store's clock, expires {max(0.0, ttl - age):.0f}s after "
                f"its last renewal)")

    @staticmethod
    def _crashed_here(record: dict[str, Any]) -> bool:
        """The holder ran on this host and its process is gone (or its pid now names another process)."""
        if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
            return False
        started = _process_start(record["pid"])
        return not started or started != record.get("pid_start", started)

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except RootLeaseLost:
                return
            except model_root.RootUnreachable as exc:  # try again; others may take it after ttl
                event(log, "model root lease not renewed", logging.WARNING, root=self.root, error=str(exc))

    def renew(self) -> None:
        """Rewrites the lease if it is still ours; raises RootLeaseLost (and remembers it) if it is not."""
        if self.lost:
            raise RootLeaseLost(self.lost)
        self._renewals += 1
        try:
            self._stamp = self._store.write(self._record(), self._stamp)
        except _Taken:
            current = self._store.read()
            self.lost = (f"the model root {self.root}'s lease was taken over by "
                         f"{current.raw.decode(errors='replace') if current else 'nobody (it was removed)'}")
            event(log, "model root lease lost: publishing stops", logging.ERROR, root=self.root, reason=self.lost)
            raise RootLeaseLost(self.lost) from None

    def confirm(self) -> None:
        """Raises RootLeaseLost unless the lease in the store is still this one."""
        if self.lost:
            raise RootLeaseLost(self.lost)
        current = self._store.read()
        if current is None or current.stamp != self._stamp:
            self.renew()  # says why, and remembers it

    def release(self) -> None:
        """Stops renewing and removes the lease if it is still ours, so the next trainer need not wait."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if _HELD.get(self.root) is self:
            del _HELD[self.root]
        if not self.lost and self._stamp:
            try:
                self._store.delete(self._stamp)
            except model_root.RootUnreachable as exc:  # it expires instead
                event(log, "model root lease not released; it expires", logging.WARNING, error=str(exc))


def confirm(root: str) -> None:
    """Before a version appears: raises RootLeaseLost if this process took a lease on root and lost it.

    A process that never took one (a library caller, a unit test) is not checked.
    """
    lease = _HELD.get(root)
    if lease is not None:
        lease.confirm()
