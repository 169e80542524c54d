"""The trainer under kill -9, SIGTERM and bursts of concurrent requests."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from clients import ResourceExhausted, TrainerClient
from movierec_common import artifact as artifact_format
from tests.datagen import write_grouplens_files
from tests.servers import start_trainer

pytestmark = pytest.mark.slow
KILLS = 8


def _assert_every_version_complete(model_root) -> list[int]:
    versions = sorted(int(p.name) for p in model_root.iterdir() if p.name.isdigit())
    for version in versions:
        path = str(model_root / str(version))
        metadata = artifact_format.read_metadata(path)
        artifact_format.verify_manifest(path, metadata["files"])
    return versions


def _job_kwargs(**extra):
    return dict(ratings_path="ratings.data", items_path="items.item", holdout_size=2, **extra)


def _wait_for_phase(tc: TrainerClient, job_id: str, phases: set[str], timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = tc.get_job(job_id)
        if job.progress.phase in phases or job.done:
            return job
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} never reached {phases}")


def test_kill_9_at_random_moments_never_leaves_an_incomplete_version(tmp_path):
    data_root = write_grouplens_files(tmp_path / "data", users=200, items=120, per_user=20)
    model_root = tmp_path / "models"
    rng = random.Random(20261129)
    args = ("--data-root", str(data_root), "--keep-versions", "0")
    trainer = start_trainer(model_root, tmp_path, *args)
    killed_jobs, moments = [], []
    try:
        for kill in range(KILLS):
            with TrainerClient(trainer.address, timeout=30) as tc:
                job = tc.train("two_tower", epochs=3, seed=kill + 1, **_job_kwargs())
                if kill % 2 == 0:  # aim at the publishing window
                    _wait_for_phase(tc, job.id, {"publishing"})
                    time.sleep(rng.uniform(0.0, 0.6))
                else:
                    time.sleep(rng.uniform(0.0, 4.0))
                moments.append(tc.get_job(job.id).progress.phase)
            trainer.kill()
            killed_jobs.append(job.id)
            before_restart = _assert_every_version_complete(model_root)

            trainer = start_trainer(model_root, tmp_path, *args)
            assert not list(model_root.glob(".tmp-*")), "stale temp folder survived a restart"
            with TrainerClient(trainer.address, timeout=30) as tc:
                record = tc.get_job(job.id)
                assert record.state in ("FAILED", "SUCCEEDED")
                if record.state == "FAILED":
                    assert "interrupted" in record.error
                else:
                    assert record.model_version in before_restart

        with TrainerClient(trainer.address, timeout=30) as tc:
            final = tc.wait_for_job(tc.train("two_tower", epochs=2, **_job_kwargs()).id, timeout=300)
            assert final.state == "SUCCEEDED", final.error
            versions = _assert_every_version_complete(model_root)
            assert final.model_version == max(versions) and versions.count(final.model_version) == 1
            history = {j.id for j in tc.list_jobs(limit=100)}
            assert set(killed_jobs) <= history
        print(f"\nkills survived: {KILLS}; phases at kill: {sorted(set(moments))}; "
              f"publishing kills: {moments.count('publishing') + moments.count('done')}; versions: {versions}")
        assert "publishing" in moments
    finally:
        trainer.kill()


def test_sigterm_cancels_the_running_job_and_publishes_nothing(tmp_path):
    data_root = write_grouplens_files(tmp_path / "data", users=200, items=120, per_user=20)
    model_root = tmp_path / "models"
    trainer = start_trainer(model_root, tmp_path, "--data-root", str(data_root))
    with TrainerClient(trainer.address, timeout=30) as tc:
        job = tc.train("two_tower", epochs=200, hyperparameters={"patience": 200}, **_job_kwargs())
        _wait_for_phase(tc, job.id, {"training"})
    started = time.monotonic()
    code = trainer.terminate(timeout=60)
    assert code == 0, f"exit status {code}; the trainer's log ends:\n{trainer.log_tail()}"
    assert time.monotonic() - started < 45
    assert not [p for p in model_root.iterdir() if not p.name.startswith(".")]
    trainer = start_trainer(model_root, tmp_path, "--data-root", str(data_root))
    try:
        with TrainerClient(trainer.address, timeout=30) as tc:
            record = tc.get_job(job.id)
            assert record.state == "CANCELLED" and not record.published
    finally:
        trainer.terminate()


def test_fifty_concurrent_trains_with_ten_keys_make_ten_jobs_and_the_queue_is_bounded(tmp_path):
    data_root = write_grouplens_files(tmp_path / "data")
    trainer = start_trainer(tmp_path / "models", tmp_path, "--data-root", str(data_root), "--queue-size", "12")
    try:
        with TrainerClient(trainer.address, timeout=30) as tc:
            def submit(i):
                return tc.train("bpr", epochs=1, idempotency_key=f"key-{i % 10}", **_job_kwargs()).id

            with ThreadPoolExecutor(max_workers=50) as pool:
                ids = list(pool.map(submit, range(50)))
            assert len(set(ids)) == 10
            assert len(tc.list_jobs(limit=100)) == 10
            for i in range(50):  # fill whatever room is left, then one more must bounce
                try:
                    tc.train("bpr", epochs=1, idempotency_key=f"fill-{i}", **_job_kwargs())
                except ResourceExhausted as exc:
                    assert "queue is full" in exc.details
                    break
            else:
                pytest.fail("the queue never filled")
    finally:
        trainer.kill()


@pytest.mark.parametrize("content, fragment", [
    (b"1\t1\t5\n", "ratings.bad:1"),                               # wrong column count
    (b"1\tone\t5\t880000000\n", "ratings.bad:1"),                  # non-numeric id
    (b"1\t99999\t5\t880000000\n", "99999"),                        # unknown movie id
    (b"", "empty"),                                                # empty file
    ("1\t1\t5\t88\u00e90000\n".encode("utf-16"), "ratings.bad"),   # wrong encoding
])
def test_malformed_ratings_files_are_refused_with_a_clear_message(tmp_path, content, fragment):
    from trainer_service import pipeline
    from trainer_service.jobs import TrainSpec

    data_root = write_grouplens_files(tmp_path / "data")
    (data_root / "ratings.bad").write_bytes(content)
    spec = TrainSpec(model="two_tower", ratings_path="ratings.bad", items_path="items.item")
    with pytest.raises(pipeline.InvalidRequest) as caught:
        pipeline.validate_spec(spec, pipeline.TrainerConfig(model_root=str(tmp_path / "m"), data_root=str(data_root)))
    assert fragment in str(caught.value)


def test_a_1_gb_ratings_file_fails_its_job_not_the_server(tmp_path):
    data_root = write_grouplens_files(tmp_path / "data")
    with open(data_root / "huge.data", "wb") as handle:  # sparse: 1 GB without using the disk
        handle.truncate(1024 ** 3)
    # The default limit (2 GiB) admits ML-25M; this trainer is started with a lower one.
    trainer = start_trainer(tmp_path / "models", tmp_path, "--data-root", str(data_root),
                            "--max-dataset-bytes", str(200 * 1000 ** 2))
    try:
        with TrainerClient(trainer.address, timeout=30) as tc:
            job = tc.wait_for_job(tc.train("two_tower", ratings_path="huge.data", items_path="items.item").id,
                                  timeout=120)
            assert job.state == "FAILED"
            assert "limit" in job.error and "huge.data" in job.error
            ok = tc.wait_for_job(tc.train("bpr", epochs=1, **_job_kwargs()).id, timeout=300)
            assert ok.state == "SUCCEEDED", ok.error
        assert trainer.alive()
    finally:
        trainer.terminate()
