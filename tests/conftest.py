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


# The suite runs on two processes, a module each at a time (pytest-xdist's ``--dist loadfile``, in
# pyproject's addopts), so that one module's waits (servers starting, polls, subprocesses) overlap the
# other's work: measured on a 2-core machine, 1,066 s against 1,474 s in one process. A module handed
# out last runs alone, so the longest ones (over 40 s each in that run) are collected first.
LONGEST_MODULES_FIRST = (
    "tests/integration/test_distributed_training.py",
    "tests/unit/test_training.py",
    "tests/unit/test_scale_benchmark.py",
    "tests/faults/test_fuzz.py",
    "tests/faults/test_recommender_faults.py",
    "tests/faults/test_trainer_faults.py",
    "tests/integration/test_record_interactions.py",
    "tests/faults/test_access_control.py",
)


def pytest_collection_modifyitems(config, items):
    """Puts :data:`LONGEST_MODULES_FIRST`'s tests first, each module's in their own order (a stable sort)."""
    rank = {name: position for position, name in enumerate(LONGEST_MODULES_FIRST)}

    def position(item) -> int:
        relative = Path(str(item.fspath)).resolve().relative_to(REPO_ROOT).as_posix()
        return rank.get(relative, len(rank))

    items.sort(key=position)


@pytest.fixture(scope="session", autouse=True)
def state_folder_of_this_run(tmp_path_factory):
    """Every server a test starts without --events (benchmarks' tiny runs, direct ServerProcess starts)
    keeps its interactions under this run's own state folder, never the user's ~/.local/state: the
    servers inherit $XDG_STATE_HOME."""
    state = tmp_path_factory.mktemp("xdg-state")
    before = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(state)
    yield state
    if before is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = before


@pytest.fixture(scope="module", autouse=True)
def no_server_outlives_its_module():
    """Stops any server this module's tests or fixtures started and did not stop, and fails the module
    for it (an error at the teardown of its last test). Autouse, so torn down after the module's own
    module-scoped fixtures, whose clean-up has run by then."""
    from tests.servers import STARTED, stop_leftovers

    first = len(STARTED)
    yield
    left = stop_leftovers(since=first)
    if left:
        pytest.fail(f"{len(left)} server(s) started in this module were still running at its end "
                    f"(a fixture or test without clean-up): {', '.join(left)}", pytrace=False)


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


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the whole session (tests/postgres.py: the pgserver wheel's binaries, else
    Debian's), started on first use, stopped and deleted at the end. ``stop()`` / ``start()`` restart it at the
    same address. When none can be started it fails under CI and skips elsewhere, like ``movielens_dir``."""
    from tests.postgres import PostgresUnavailable, start_server

    try:
        server = start_server()
    except PostgresUnavailable as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL is needed and could not be started: {error}")
        pytest.skip(f"PostgreSQL could not be started: {error}")
    yield server
    server.destroy()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A URL to an empty schema of its own on the session's server (running again if a test stopped it)."""
    postgres_server.start()
    return postgres_server.create_schema()
