"""The model root on an object store: a real S3 API (moto's server mode) on a
loopback port, the real trainer publishing into it through s3fs, and the real
recommender copying, verifying, serving and reloading from it."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from clients import RecommenderClient, TrainerClient
from movierec_common import model_root
from tests.datagen import write_grouplens_files
from tests.load import RotatingLoad
from tests.s3 import s3_server
from tests.servers import rejection_reason, start_recommender, start_trainer
from tests.waiting import wait_for_version
from trainer_service.jobs import JobStore

pytestmark = pytest.mark.slow

BUCKET = "models"
ROOT = f"s3://{BUCKET}/movierec"


@pytest.fixture(scope="module")
def s3():
    with s3_server(BUCKET) as server:
        yield server


def _files(local: str) -> list[str]:
    """A version's files, metadata.json last (the order a publisher uploads them in)."""
    names = sorted(os.path.relpath(os.path.join(d, f), local) for d, _, files in os.walk(local) for f in files)
    return sorted(names, key=lambda name: name == "metadata.json")


def _upload(local: str, version: int, names: list[str], *, corrupt: str | None = None) -> None:
    fs, base = model_root.filesystem(ROOT)
    for name in names:
        with open(os.path.join(local, name), "rb") as handle:
            data = handle.read()
        if name == corrupt:
            data = data[:-8] + bytes(8)  # same size, other bytes
        fs.pipe_file(f"{base}/{version}/{name}", data)


ROOT_GONE = "model root shows no versions (empty or unreachable); serving continues on the loaded one"


def _logged(log_path, name: str) -> bool:
    return any(json.loads(line).get("event") == name
               for line in log_path.read_text(errors="replace").splitlines() if line.startswith("{"))


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


def _plausible(response, user: str, k: int, exclude_seen) -> str:
    """k distinct movies, best first (the small stack has 40 movies: fewer when k is larger)."""
    ids = [item.movie_id for item in response.items]
    scores = [item.score for item in response.items]
    if not ids or len(ids) > k or len(set(ids)) != len(ids) or scores != sorted(scores, reverse=True):
        return f"{ids} for k={k}"
    return ""


def test_publish_validate_serve_and_reload_on_s3(s3, tmp_path):
    data_root = write_grouplens_files(tmp_path / "data")
    trainer = start_trainer(ROOT, tmp_path, "--data-root", str(data_root), "--keep-versions", "2")
    recommender = start_recommender(ROOT, tmp_path, "--cache-dir", str(tmp_path / "cache"))
    try:
        with TrainerClient(trainer.address, timeout=30) as tc, RecommenderClient(recommender.address, timeout=10) as rc:
            job = tc.wait_for_job(tc.train("two_tower", epochs=2, ratings_path="ratings.data",
                                           items_path="items.item", holdout_size=2).id, timeout=300)
            assert job.state == "SUCCEEDED", job.error
            assert job.model_version == 1
            rc.wait_until_serving(timeout=60)
            assert rc.recommend("1", k=5).model_version == 1
            # Job records and serving markers live on the store too.
            assert [j.id for j in JobStore(ROOT).load_all()] == [job.id]
            deadline = time.monotonic() + 10
            while not model_root.list_names(model_root.join(ROOT, ".serving")) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert model_root.versions_in_use(ROOT) == {1}
            # The served copy was verified locally, in a folder of this replica's own; only that copy is kept.
            [own] = os.listdir(tmp_path / "cache")
            assert len(os.listdir(tmp_path / "cache" / own)) == 1

            local = str(tmp_path / "v1")
            model_root.download(model_root.version_dir(ROOT, 1), local)

            # Every file but metadata.json: an upload in progress (or cut short). Never served.
            _upload(local, 2, _files(local)[:-1])
            assert "metadata.json is missing" in rejection_reason(rc, 2)
            # A complete version with one altered file: refused with its reason.
            variables = next(name for name in os.listdir(os.path.join(local, "variables")) if ".data-" in name)
            _upload(local, 3, _files(local), corrupt=f"variables/{variables}")
            assert "checksum" in rejection_reason(rc, 3)
            assert rc.recommend("1", k=5).model_version == 1
            # metadata.json arrives last: version 2 is complete now, and served.
            _upload(local, 2, ["metadata.json"])
            wait_for_version(rc, 2)

            # The store goes away under load, until the replica has seen it gone: no call fails, and
            # reloads resume after. The calls go to every user with every k and exclude_seen.
            with RotatingLoad(recommender.address, range(1, 61), threads=1, check=_plausible) as load:
                _wait_for(lambda: load.calls > 0)
                s3.stop()
                _wait_for(lambda: _logged(tmp_path / "recommender.log", ROOT_GONE))
                during = load.calls
                _wait_for(lambda: load.calls > during + 200)  # answered with the store still away
                s3.start()
                _upload(local, 4, _files(local))
                reload_seconds = wait_for_version(rc, 4, timeout=60)
            print(f"\nS3 outage: {load.calls} calls, {len(load.failures)} failed; version 4 served "
                  f"{reload_seconds:.1f}s after its upload")
            assert load.failures == [], load.failures[:5]
            load.assert_rotated()
            # The outage said nothing about version 3: it is still refused for its own reason.
            [v3] = [info for info in rc.model_status().versions if info.version == 3]
            assert v3.state == "REJECTED" and "checksum" in v3.reason, v3

            # Retention on the store: keep 2, never the served one.
            job = tc.wait_for_job(tc.train("two_tower", epochs=1, refit=False, ratings_path="ratings.data",
                                           items_path="items.item", holdout_size=2).id, timeout=300)
            assert job.state == "SUCCEEDED" and job.model_version == 5, job.error
            assert model_root.list_versions(ROOT) == [4, 5]
            wait_for_version(rc, 5)
    finally:
        trainer.terminate()
        recommender.terminate()
    assert os.listdir(tmp_path / "cache") == []  # the replica removed its copies when it stopped
    shutil.rmtree(tmp_path / "v1", ignore_errors=True)
