"""The client and ``movierec`` CLI for the trainer's feedback-loop fields: ``train --interactions``, the
trigger in ``jobs`` / ``job``, and the online hit rate and interactions in ``versions``, against an
in-process gRPC server answering from fixed protos (the real trainer: tests/integration/
test_retrain_from_interactions.py)."""

from __future__ import annotations

import json
from concurrent import futures

import grpc
import pytest

from movierec.v1 import trainer_pb2, trainer_pb2_grpc

USED = trainer_pb2.InteractionsUsed(store_id="s1", store="sqlite:///e.sqlite", watermark=5000, read=5000, used=4812,
                                    replaced=150, unknown_movies=38, new_users=12)


def _job(job_id: str, trigger: str, watermark: int = 0) -> trainer_pb2.TrainJob:
    return trainer_pb2.TrainJob(
        id=job_id, state=trainer_pb2.TrainJob.SUCCEEDED, trigger=trigger, interactions_watermark=watermark,
        request=trainer_pb2.TrainRequest(model="ease", dataset=trainer_pb2.DatasetSpec(
            interactions=trainer_pb2.InteractionsSpec(include=bool(watermark), up_to=watermark))),
        model_version=3, published=True, metrics={"recall_at_10": 0.25})


class Trainer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self):
        self.trains: list[trainer_pb2.TrainRequest] = []
        self.jobs = [_job("job-2", "retrain_after_interactions", 5000), _job("job-1", "")]
        self.versions = [
            trainer_pb2.VersionInfo(version=13, model_kind="ease", metrics={"recall_at_10": 0.3125}, size_bytes=100,
                                    online_judged=2000, online_hits=250, online_hit_rate=0.125, interactions=USED),
            trainer_pb2.VersionInfo(version=12, model_kind="ease", size_bytes=100),
        ]
        self.online_problem = ""

    def Train(self, request, context):
        self.trains.append(request)
        return trainer_pb2.TrainJob(id="job-9", state=trainer_pb2.TrainJob.QUEUED, request=request,
                                    trigger="request")

    def ListJobs(self, request, context):
        return trainer_pb2.ListJobsResponse(jobs=self.jobs)

    def GetJob(self, request, context):
        return next(job for job in self.jobs if job.id == request.job_id)

    def ListVersions(self, request, context):
        return trainer_pb2.ListVersionsResponse(versions=self.versions, online_problem=self.online_problem)


@pytest.fixture(scope="module")
def server():
    trainer = Trainer()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trainer_pb2_grpc.add_TrainerServicer_to_server(trainer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield trainer, f"127.0.0.1:{port}"
    grpc_server.stop(None)


@pytest.fixture
def run(server, cli, monkeypatch):
    trainer, address = server
    trainer.trains.clear()
    trainer.online_problem = ""
    monkeypatch.setenv("MOVIEREC_TRAINER", address)
    monkeypatch.delenv("MOVIEREC_TOKEN", raising=False)
    return cli


def test_train_with_interactions_sends_them(run, server):
    trainer, _ = server
    assert run("train", "--model", "ease", "--interactions", "--interactions-up-to", "700")[0] == 0
    assert run("train", "--model", "ease", "--interactions")[0] == 0
    assert run("train", "--model", "ease")[0] == 0
    sent = [(r.dataset.interactions.include, r.dataset.interactions.up_to) for r in trainer.trains]
    assert sent == [(True, 700), (True, 0), (False, 0)]
    code, _, err = run("train", "--model", "ease", "--interactions-up-to", "7")
    assert code != 0 and "--interactions-up-to goes with --interactions" in err


def test_jobs_show_what_triggered_them(run):
    code, out, _ = run("jobs")
    assert code == 0
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["id", "model", "state", "trigger", "version", "recall@10", "created"]
    assert lines[1][:5] == ["job-2", "ease", "SUCCEEDED", "retrain_after_interactions", "3"]
    assert lines[2][:5] == ["job-1", "ease", "SUCCEEDED", "request", "3"]  # no trigger on the wire: a request

    code, out, _ = run("job", "job-2")
    assert code == 0
    assert "trigger:" in out and "retrain policy (--retrain-after-interactions)" in out
    assert "recorded interactions up to store position 5000" in out
    data = json.loads(run("--json", "job", "job-2")[1])
    assert data["trigger"] == "retrain_after_interactions" and data["interactions_watermark"] == 5000


def test_versions_show_the_online_hit_rate_beside_recall(run, server):
    code, out, err = run("versions")
    assert code == 0, err
    lines = [line.split() for line in out.splitlines()]
    assert lines[0][:5] == ["version", "kind", "recall@10", "online", "judged"] and lines[0][-1] == "interactions"
    assert lines[1][:5] == ["13", "ease", "0.3125", "0.1250", "2,000"]
    assert lines[1][-4:] == ["4,812", "up", "to", "#5000"]
    assert lines[2][:5] == ["12", "ease", "-", "-", "0"] and lines[2][-1] == "-"
    data = json.loads(run("--json", "versions")[1])
    assert data["versions"][0]["online"] == {"judged": 2000, "hits": 250, "hit_rate": 0.125}
    assert data["versions"][0]["interactions"]["watermark"] == 5000
    assert "online" not in data["versions"][1] and "interactions" not in data["versions"][1]  # none: left out

    trainer, _ = server
    trainer.online_problem = "interactions are off on this trainer (--events none): no online figures"
    code, out, err = run("versions")
    assert code == 0 and "note: interactions are off on this trainer" in err
