"""The trainer side of the feedback loop on a real trainer server: a job trained on recorded interactions
records its watermark and counts (metadata.json, ListVersions, the job); ListVersions reports the online
outcomes replicas wrote to the store; the retrain policy queues exactly one job per watermark, shows its
trigger, and queues none again after a restart. Tiny generated data and the closed-form ``ease`` kind, so
each job takes about a second."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients import TrainerClient
from movierec_common.artifact import read_metadata
from movierec_common.event_store import Interaction, OnlineOutcome, open_store
from tests.datagen import write_grouplens_files
from tests.servers import start_trainer
from tests.waiting import until

pytestmark = pytest.mark.slow

FILES = {"ratings_path": "ratings.data", "items_path": "items.item"}  # write_grouplens_files: users 1-60, movies 1-40


@pytest.fixture
def setting(tmp_path):
    data_root = write_grouplens_files(tmp_path / "data")
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    store = open_store(url)
    assert store is not None
    yield {"base": tmp_path, "data_root": data_root, "url": url, "store": store, "models": tmp_path / "models"}
    store.close()


def _record(store, rows: list[tuple[str, int]], prefix: str) -> int:
    outcome = store.record([Interaction(event_id=f"{prefix}-{n}", user_id=user, movie_id=movie, rating=4.0,
                                        occurred_at=1_700_000_000.0 + n) for n, (user, movie) in enumerate(rows)])
    return outcome.watermark


def _wait_done(tc: TrainerClient, job_id: str, timeout: float = 120.0):
    return until(lambda: (job := tc.get_job(job_id)).done and job, timeout, f"job {job_id} to end")


def test_a_job_on_interactions_records_them_and_list_versions_shows_them(setting):
    store = setting["store"]
    # Base user 1 (by its decimal string) twice on movie 21, which odd users never rated in the base data
    # (tests.datagen), alice (new), and movie 999 (not in the items data).
    watermark = _record(store, [("1", 21), ("1", 21), ("alice", 3), ("alice", 4), ("bob", 999)], "a")
    trainer = start_trainer(setting["models"], setting["base"], "--data-root", str(setting["data_root"]),
                            "--events", setting["url"])
    try:
        with TrainerClient(trainer.address, timeout=30) as tc:
            job = _wait_done(tc, tc.train("ease", holdout_size=2, interactions=True, **FILES).id)
            assert job.state == "SUCCEEDED" and job.published, job.error or job.not_published_reason
            assert job.trigger == "request" and job.interactions and job.interactions_watermark == watermark == 5

            metadata = read_metadata(str(setting["models"] / str(job.model_version)))
            record = metadata.interactions
            assert record is not None and record.store_id == store.store_id
            assert (record.watermark, record.read, record.used, record.replaced, record.unknown_movies,
                    record.new_users) == (5, 5, 3, 1, 1, 1)
            raw = json.loads((setting["models"] / str(job.model_version) / "metadata.json").read_text())
            assert raw["interactions"]["watermark"] == 5 and raw["interactions"]["store"] == store.description
            assert metadata.dataset.num_users == 61  # 60 base users and alice; bob's only movie is unknown

            store.report_online("replica-a", {job.model_version: OnlineOutcome(judged=10, hits=3)})
            store.report_online("replica-b", {job.model_version: OnlineOutcome(judged=30, hits=9)})
            listed = tc.list_versions()
            assert listed.online_problem == ""
            version = listed.versions[0]
            assert version.version == job.model_version
            assert version.online is not None and (version.online.judged, version.online.hits) == (40, 12)
            assert version.online.hit_rate == pytest.approx(0.3)
            assert version.interactions is not None
            assert (version.interactions.watermark, version.interactions.used, version.interactions.new_users) == \
                (5, 3, 1)
    finally:
        trainer.terminate()


def _policy_jobs(tc: TrainerClient) -> list:
    return [job for job in tc.list_jobs(limit=100) if job.trigger != "request"]


def _polled_after_restart(log: Path) -> bool:
    return any(json.loads(line).get("event") == "retrain policy following the event store"
               for line in log.read_text().splitlines() if line.startswith("{"))


def test_the_policy_queues_one_job_per_watermark_and_none_again_after_a_restart(setting):
    store, base = setting["store"], setting["base"]
    flags = ("--data-root", str(setting["data_root"]), "--events", setting["url"], "--retrain-after-interactions", "5")
    trainer = start_trainer(setting["models"], base, *flags)
    try:
        with TrainerClient(trainer.address, timeout=30) as tc:
            first = _wait_done(tc, tc.train("ease", holdout_size=2, **FILES).id)
            assert first.state == "SUCCEEDED", first.error
            assert _record(store, [(str(user), 1 + user % 40) for user in range(1, 6)], "b") == 5
            (queued,) = until(lambda: _policy_jobs(tc), 60, "a job queued by the retrain policy")
            assert queued.trigger == "retrain_after_interactions" and queued.interactions_watermark == 5
            assert queued.interactions and queued.model == "ease"
            done = _wait_done(tc, queued.id)
            assert done.state == "SUCCEEDED" and done.published, done.error or done.not_published_reason
            assert read_metadata(str(setting["models"] / str(done.model_version))).interactions.watermark == 5
            assert tc.get_job(queued.id).trigger == "retrain_after_interactions"
    finally:
        trainer.terminate()

    restart_logs = base / "restarted"
    restart_logs.mkdir()
    trainer = start_trainer(setting["models"], restart_logs, *flags)
    try:
        with TrainerClient(trainer.address, timeout=30) as tc:
            # The restarted policy has read the store (and decided) once; then 5 more interactions.
            until(lambda: _polled_after_restart(restart_logs / "trainer.log"), 60, "the restarted policy's first poll")
            _record(store, [(str(user), 1 + user % 40) for user in range(6, 11)], "c")
            until(lambda: len(_policy_jobs(tc)) > 1, 60, "a second policy job")
            assert [job.interactions_watermark for job in _policy_jobs(tc)] == [10, 5]  # none again for 5
    finally:
        trainer.terminate()


def test_the_trainer_starts_and_answers_while_the_event_store_is_down(setting):
    down = "postgresql://movierec:secret@127.0.0.1:1/events"  # nothing listens on port 1
    trainer = start_trainer(setting["models"], setting["base"], "--data-root", str(setting["data_root"]),
                            "--events", down, "--retrain-after-interactions", "5")
    try:
        with TrainerClient(trainer.address, timeout=30) as tc:
            listed = tc.list_versions()  # still answers, with the reason the online figures are 0
            assert "could not be read" in listed.online_problem and "secret" not in listed.online_problem
            job = _wait_done(tc, tc.train("ease", holdout_size=2, interactions=True, **FILES).id)
            assert job.state == "FAILED" and "could not read its interactions" in job.error, job.error
            assert "127.0.0.1:1" in job.error and "secret" not in job.error  # the store, password redacted
            assert tc.list_versions().versions == []
    finally:
        trainer.terminate()
