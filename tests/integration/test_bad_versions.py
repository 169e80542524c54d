"""Version folders that are incomplete or corrupt are never served; the
current version keeps answering, and GetModelStatus says why."""

from __future__ import annotations

import shutil
import time

import pytest

from clients import RecommenderClient
from tests.servers import start_recommender


def _status_of(rc: RecommenderClient, version: int, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for info in rc.model_status().versions:
            if info.version == version and info.state == "REJECTED":
                return info
        time.sleep(0.1)
    pytest.fail(f"version {version} was not rejected within {timeout}s")


def _served_version(model_root) -> int:
    return max(int(p.name) for p in model_root.iterdir() if p.name.isdigit())


def _bad_version(model_root, good: int, version: int, damage) -> None:
    """A copy of version ``good``, damaged while it is still a ``.tmp-*`` folder (which the recommender
    ignores), then renamed into place at once, as the publisher does: no poll can see it half-made."""
    tmp = model_root / f".tmp-{version}-test"
    shutil.copytree(model_root / str(good), tmp)
    damage(tmp)
    tmp.rename(model_root / str(version))


def test_incomplete_and_corrupt_versions_are_rejected_and_old_one_keeps_serving(small_stack):
    model_root = small_stack["model_root"]
    good = _served_version(model_root)
    with RecommenderClient(small_stack["recommender"].address, timeout=10) as rc:
        assert rc.recommend("1", k=5).model_version == good

        _bad_version(model_root, good, good + 1, lambda tmp: (tmp / "metadata.json").unlink())
        info = _status_of(rc, good + 1)
        assert "metadata.json is missing" in info.reason

        def truncate_the_graph(tmp):
            pb = tmp / "saved_model.pb"
            pb.write_bytes(b"\x00garbage" + pb.read_bytes()[: len(pb.read_bytes()) // 3])

        _bad_version(model_root, good, good + 2, truncate_the_graph)
        info = _status_of(rc, good + 2)
        assert "saved_model.pb" in info.reason
        no_metadata, corrupt = model_root / str(good + 1), model_root / str(good + 2)

        for user in range(1, 61):  # every user of the small stack, k on both sides of the 100 ranked at load
            assert rc.recommend(str(user), k=user * 3).model_version == good
        status = rc.model_status()
        assert status.served_version == good

        # A recommender started now skips the bad newest versions too.
        fresh = start_recommender(model_root, small_stack["base"])
        try:
            with RecommenderClient(fresh.address, timeout=10) as fresh_rc:
                fresh_rc.wait_until_serving(timeout=60)
                assert fresh_rc.recommend("1", k=5).model_version == good
        finally:
            fresh.terminate()
        shutil.rmtree(no_metadata)
        shutil.rmtree(corrupt)
