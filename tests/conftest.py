"""Shared fixtures: where the real MovieLens data is, and how to get free ports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
_DEFAULT_MOVIELENS = REPO_ROOT.parent / "shared" / "data" / "ml-100k"


def _movielens_dir() -> Path | None:
    for candidate in (os.environ.get("MOVIELENS_DIR"), str(_DEFAULT_MOVIELENS)):
        if candidate and (Path(candidate) / "u.data").is_file():
            return Path(candidate).resolve()
    return None


@pytest.fixture(scope="session", autouse=True)
def no_server_outlives_the_session():
    """Stops any server a test started and did not stop (a fixture that failed before its clean-up)."""
    yield
    from tests.servers import stop_leftovers

    left = stop_leftovers()
    if left:
        print(f"\nstopped {len(left)} server(s) a test left running: {', '.join(left)}")


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    """The GroupLens ml-100k folder. Missing data fails under CI and skips elsewhere."""
    found = _movielens_dir()
    if found is None:
        message = (
            "MovieLens 100K not found: set MOVIELENS_DIR to a GroupLens ml-100k folder "
            "(with u.data, u.item, ua.base, ua.test)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found
