"""The trainer's job lifecycle on a real server: bounded queue, cancellation,
idempotency keys, and job history that survives a restart and a kill -9."""

from __future__ import annotations

import time

import grpc
import pytest

from clients import MovieRecError, ResourceExhausted, TrainerClient
from tests.servers import start_trainer

pytestmark = pytest.mark.slow


def _wait_state(tc: TrainerClient, job_id: str, states: set[str], timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        job = tc.get_job(job_id)
        if job.state in states:
            return job
        assert time.monotonic() < deadline, f"job {job_id} stuck in {job.state}"
        time.sleep(0.1)


def test_queue_cancel_idempotency_and_history_across_restarts(tmp_path, movielens_dir):
    model_root = tmp_path / "models"
    env = {"MOVIELENS_DIR": str(movielens_dir)}
    trainer = start_trainer(model_root, tmp_path, "--queue-size", "1", env=env)
    try:
        with TrainerClient(trainer.address, timeout=30) as tc:
            running = tc.train("two_tower", epochs=200, hyperparameters={"patience": 200}, idempotency_key="A")
            _wait_state(tc, running.id, {"RUNNING"})
            queued = tc.train("bpr", epochs=1, idempotency_key="B")
            assert queued.state == "QUEUED"
            assert tc.train("bpr", epochs=1, idempotency_key="B").id == queued.id  # same key, same job
            with pytest.raises(MovieRecError) as conflict:
                tc.train("two_tower", epochs=3, idempotency_key="B")
            assert conflict.value.code == grpc.StatusCode.ALREADY_EXISTS
            with pytest.raises(ResourceExhausted) as full:
                tc.train("bpr", epochs=1, idempotency_key="C")
            assert "queue is full" in full.value.details

            assert tc.cancel_job(queued.id).state == "CANCELLED"
            tc.cancel_job(running.id)
            cancelled = _wait_state(tc, running.id, {"CANCELLED", "FAILED", "SUCCEEDED"})
            assert cancelled.state == "CANCELLED", cancelled.error
            assert not [p for p in model_root.iterdir() if not p.name.startswith(".")], "a cancelled job published"

            interrupted = tc.train("two_tower", epochs=200, hyperparameters={"patience": 200})
            _wait_state(tc, interrupted.id, {"RUNNING"})
        trainer.kill()  # kill -9 mid-job

        trainer = start_trainer(model_root, tmp_path, env=env)
        with TrainerClient(trainer.address, timeout=30) as tc:
            jobs = {job.id: job for job in tc.list_jobs()}
            assert set(jobs) == {running.id, queued.id, interrupted.id}
            assert jobs[running.id].state == "CANCELLED" and jobs[queued.id].state == "CANCELLED"
            assert jobs[interrupted.id].state == "FAILED"
            assert "interrupted" in jobs[interrupted.id].error
            assert not list(model_root.glob(".tmp-*"))
            # The key survives the restart too.
            assert tc.train("bpr", epochs=1, idempotency_key="B").id == queued.id
        assert trainer.terminate() == 0
    finally:
        trainer.kill()
