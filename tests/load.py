"""Recommend calls in a loop, for tests that change something under load (a
reload, a bad version, a killed replica) and must show that no call failed.

The calls rotate through every user and through every way an answer is
built: k within the rankings computed at load and beyond them (k > 100, see
``retrieval.PRECOMPUTED_TOP``), ``exclude_seen`` true, false and unset, and an
unknown user (cold start). Repeating a few (user, k) pairs would mostly
measure the per-version answer cache, a dictionary lookup, instead of the
model being swapped underneath; here k also walks through 1..150, so a
version sees thousands of distinct requests and keeps computing answers.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable

import numpy as np

from clients import RecommenderClient

UNKNOWN_USER = "no-such-user"
K_CYCLE = 150  # k runs through 1..150: both sides of the 100 ranked ahead at load
EXCLUDE_CHOICES = (True, False, None)  # None: the field unset (the server's default, true)


def request_at(users: list[str], i: int) -> tuple[str, int, bool | None]:
    """The i-th request: users change fastest, so the first len(users) calls reach every user."""
    everyone = [*users, UNKNOWN_USER]
    user = everyone[i % len(everyone)]
    k = 1 + (i * 37) % K_CYCLE  # 37 is prime to 150: every k comes up
    exclude = EXCLUDE_CHOICES[(i // len(everyone)) % len(EXCLUDE_CHOICES)]
    return user, k, exclude


class RotatingLoad:
    """Recommend from a few threads through one client; every outcome is recorded.

    ``check(response, user, k, exclude_seen)`` may inspect each answer and
    return a problem ("" when right); problems count as failures.
    """

    def __init__(self, address: str, users, *, threads: int = 3, timeout: float = 5.0,
                 check: Callable[..., str] | None = None):
        self.client = RecommenderClient(address, timeout=timeout)
        self.users = [str(u) for u in users]
        self.check = check
        self.failures: list[str] = []
        self.versions: Counter[int] = Counter()
        self.users_asked: set[str] = set()
        self.ks: set[int] = set()
        self.excludes: set[bool | None] = set()
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    @property
    def calls(self) -> int:
        return sum(self.versions.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            user, k, exclude = request_at(self.users, next(self._counter))
            try:
                response = self.client.recommend(user, k=k, exclude_seen=exclude)
                problem = self.check(response, user, k, exclude) if self.check else ""
            except Exception as exc:  # every failure counts, whatever its kind
                problem = repr(exc)
            with self._lock:
                if problem:
                    self.failures.append(f"user {user!r} k={k} exclude_seen={exclude}: {problem}")
                    continue
                self.versions[response.model_version] += 1
                self.users_asked.add(user)
                self.ks.add(k)
                self.excludes.add(exclude)

    def assert_rotated(self) -> None:
        """Every user, the unknown one, k on both sides of 100 and every exclude_seen were answered."""
        assert self.users_asked == {*self.users, UNKNOWN_USER}, sorted({*self.users, UNKNOWN_USER} - self.users_asked)
        assert min(self.ks) <= 100 < max(self.ks), sorted(self.ks)
        assert self.excludes == set(EXCLUDE_CHOICES), self.excludes

    def __enter__(self) -> RotatingLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        self.client.close()


def brute_force_ids(artifact, user_id: str, k: int, exclude_seen: bool | None) -> list[int]:
    """The exact answer from the artifact's own arrays: best inner product first,
    ties to the lower movie index; popularity for an unknown user."""
    users = artifact.user_ids.tolist()
    if user_id not in users:
        order = sorted(range(artifact.num_items), key=lambda i: (-float(artifact.popularity[i]), i))
        return artifact.movie_ids[order[:k]].tolist()
    user = users.index(user_id)
    scores = (artifact.item_vectors.astype(np.float64) @ artifact.user_vectors[user].astype(np.float64))
    excluded = set(artifact.seen_items(user).tolist()) if exclude_seen is not False else set()
    order = sorted((i for i in range(artifact.num_items) if i not in excluded), key=lambda i: (-scores[i], i))
    return artifact.movie_ids[order[:k]].tolist()


def checker(artifacts: dict) -> Callable[..., str]:
    """A ``check`` comparing every answer with the brute force over the artifact of the version that gave it."""

    def check(response, user, k, exclude) -> str:
        artifact = artifacts.get(response.model_version)
        if artifact is None:
            return f"answered by version {response.model_version}, which was never published"
        expected = brute_force_ids(artifact, user, k, exclude)
        got = [item.movie_id for item in response.items]
        if got != expected:
            return f"version {response.model_version} answered {got}, the brute force says {expected}"
        if response.cold_start != (user == UNKNOWN_USER):
            return f"cold_start={response.cold_start}"
        return ""

    return check
