"""Scripted gRPC services for the client and CLI tests: a real, in-process gRPC
server whose servicers record every request and answer from small fixed protos.

Why not mock the stubs: what matters is the wire behaviour (request fields,
metadata, deadlines, gRPC's own retries, stream breaks), and only a real
server on a loopback port exercises it. A test changes one method's
behaviour by installing a handler (``servers.recommender.handlers[...]``).
The fixtures that start them live in ``conftest.py``.
"""

from __future__ import annotations

import datetime as dt
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from movierec.v1 import recommender_pb2, recommender_pb2_grpc, trainer_pb2, trainer_pb2_grpc

RECOMMENDER = "movierec.v1.Recommender"
TRAINER = "movierec.v1.Trainer"
T0 = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)

# Scores exactly representable as float32, so they survive the wire unchanged.
MOVIES = [
    (50, "Star Wars (1977)", 0.75),
    (1346, "Misérables, Les (1995)", 0.5),
    (181, "Return of the Jedi (1983)", 0.25),
]


# --------------------------------------------------------------------------- proto builders


def stamp(moment: dt.datetime):
    from google.protobuf import timestamp_pb2

    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(moment)
    return ts


# Genres and years of the fake movies: one with both, one with neither (shown as "-").
MOVIE_FACTS = {50: (["Action", "Sci-Fi"], 1977), 181: (["Action", "Romance"], 1983)}


def rec_items(n: int = 3):
    return [recommender_pb2.RecommendedItem(movie_id=m, title=t, score=s, genres=MOVIE_FACTS.get(m, ([], 0))[0],
                                            year=MOVIE_FACTS.get(m, ([], 0))[1]) for m, t, s in MOVIES[:n]]


def make_job(
    job_id: str = "job-1",
    state: str = "QUEUED",
    *,
    epoch: int = 0,
    total_epochs: int = 3,
    phase: str | None = None,
    **fields,
) -> trainer_pb2.TrainJob:
    job = trainer_pb2.TrainJob(
        id=job_id,
        state=trainer_pb2.TrainJob.State.Value(state),
        request=trainer_pb2.TrainRequest(model="two_tower", epochs=total_epochs),
        progress=trainer_pb2.Progress(
            phase=phase or {"QUEUED": "queued", "RUNNING": "training"}.get(state, "done"),
            epoch=epoch,
            total_epochs=total_epochs,
            steps_per_epoch=100,
            loss=1.0 / (epoch + 1),
            elapsed_seconds=2.5 * epoch,
        ),
        loss_history=[1.0 / (e + 1) for e in range(1, epoch + 1)],
        created_at=stamp(T0),
        **fields,
    )
    if state != "QUEUED":
        job.started_at.CopyFrom(stamp(T0 + dt.timedelta(seconds=5)))
    return job


def finished_job(job_id: str = "job-1", state: str = "SUCCEEDED", **fields) -> trainer_pb2.TrainJob:
    defaults = dict(
        epoch=3,
        metrics={"recall_at_10": 0.125, "ndcg_at_10": 0.0625},
        baseline_metrics={"recall_at_10": 0.0625, "ndcg_at_10": 0.03125},
        evaluation_split="ua",
        model_version=7,
        published=True,
        finished_at=stamp(T0 + dt.timedelta(minutes=2)),
    )
    if state != "SUCCEEDED":
        defaults.update(metrics={}, baseline_metrics={}, model_version=0, published=False, evaluation_split="")
    defaults.update(fields)
    return make_job(job_id, state, **defaults)


# --------------------------------------------------------------------------- fake services


class _Recorder:
    """Records (method, request, metadata) and dispatches to per-test handlers."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object, dict[str, str]]] = []
        self.handlers: dict[str, object] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.handlers.clear()

    def _dispatch(self, method, request, context, default):
        with self._lock:
            self.calls.append((method, request, dict(context.invocation_metadata())))
        handler = self.handlers.get(method, default)
        return handler(request, context)

    def requests(self, method: str) -> list:
        return [request for name, request, _ in self.calls if name == method]

    def metadata(self, method: str) -> list[dict[str, str]]:
        return [md for name, _, md in self.calls if name == method]


class FakeRecommender(_Recorder, recommender_pb2_grpc.RecommenderServicer):
    def Recommend(self, request, context):
        return self._dispatch("Recommend", request, context, self._recommend)

    def RecommendBatch(self, request, context):
        return self._dispatch("RecommendBatch", request, context, self._batch)

    def SimilarItems(self, request, context):
        return self._dispatch("SimilarItems", request, context, self._similar)

    def GetModelStatus(self, request, context):
        return self._dispatch("GetModelStatus", request, context, self._status)

    @staticmethod
    def _recommend(request, context):
        return recommender_pb2.RecommendResponse(items=rec_items(min(request.k, 3)), model_version=7)

    @staticmethod
    def _batch(request, context):
        results = [
            recommender_pb2.UserRecommendations(
                user_id=user, items=rec_items(min(request.k, 3)), cold_start=user == "999999"
            )
            for user in request.user_ids
        ]
        return recommender_pb2.RecommendBatchResponse(results=results, model_version=7)

    @staticmethod
    def _similar(request, context):
        return recommender_pb2.SimilarItemsResponse(
            movie=recommender_pb2.RecommendedItem(movie_id=request.movie_id, title="Star Wars (1977)", score=1.0),
            items=rec_items(3)[1 : 1 + request.k],
            model_version=7,
        )

    @staticmethod
    def _status(request, context):
        return recommender_pb2.ModelStatus(
            served_version=7,
            model_kind="two_tower",
            loaded_at=stamp(T0),
            model_root="/models",
            pinned_version=0,
            genres=[recommender_pb2.GenreCount(name="Action", movies=251),
                    recommender_pb2.GenreCount(name="Drama", movies=725)],
            versions=[
                recommender_pb2.ModelVersion(
                    version=8, state=recommender_pb2.ModelVersion.REJECTED, reason="NaN scores", model_kind="bpr"
                ),
                recommender_pb2.ModelVersion(
                    version=7,
                    state=recommender_pb2.ModelVersion.SERVING,
                    model_kind="two_tower",
                    metrics={"recall_at_10": 0.125},
                ),
            ],
            metrics={"recall_at_10": 0.125},
            num_users=943,
            num_items=1682,
        )


class FakeTrainer(_Recorder, trainer_pb2_grpc.TrainerServicer):
    def Train(self, request, context):
        return self._dispatch("Train", request, context, self._train)

    def GetJob(self, request, context):
        return self._dispatch("GetJob", request, context, self._get)

    def ListJobs(self, request, context):
        return self._dispatch("ListJobs", request, context, self._list)

    def CancelJob(self, request, context):
        return self._dispatch("CancelJob", request, context, self._cancel)

    def WatchJob(self, request, context):
        # A generator handler: the recorded call happens on the first next().
        yield from self._dispatch("WatchJob", request, context, self._watch)

    @staticmethod
    def _train(request, context):
        job = make_job("job-1", "QUEUED", total_epochs=request.epochs or 3)
        job.request.CopyFrom(request)
        return job

    @staticmethod
    def _get(request, context):
        if request.job_id != "job-1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id!r}")
        return finished_job()

    @staticmethod
    def _list(request, context):
        return trainer_pb2.ListJobsResponse(jobs=[finished_job("job-2"), finished_job("job-1", "FAILED", error="boom")])

    @staticmethod
    def _cancel(request, context):
        return finished_job(request.job_id, "CANCELLED", error="cancelled by user")

    @staticmethod
    def _watch(request, context):
        if request.job_id != "job-1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id!r}")
        yield make_job(state="QUEUED")
        for epoch in range(3):
            yield make_job(state="RUNNING", epoch=epoch, total_epochs=3)
        yield finished_job()


class Servers:
    def __init__(self) -> None:
        self.recommender = FakeRecommender()
        self.trainer = FakeTrainer()
        self.health = health.HealthServicer()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        recommender_pb2_grpc.add_RecommenderServicer_to_server(self.recommender, self.server)
        trainer_pb2_grpc.add_TrainerServicer_to_server(self.trainer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        self.server.start()

    def reset(self) -> None:
        self.recommender.reset()
        self.trainer.reset()
        for service in (RECOMMENDER, TRAINER):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)


def abort(code: grpc.StatusCode, details: str):
    def handler(request, context):
        context.abort(code, details)

    return handler


def fail_first(n: int, code: grpc.StatusCode, then):
    """A handler failing with ``code`` for the first ``n`` calls, then delegating."""
    count = {"calls": 0}

    def handler(request, context):
        count["calls"] += 1
        if count["calls"] <= n:
            context.abort(code, f"attempt {count['calls']} failed")
        return then(request, context)

    return handler



class Replica:
    """A fake recommender on its own port, with a health service the client can watch."""

    def __init__(self, credentials: grpc.ServerCredentials | None = None, host: str = "127.0.0.1") -> None:
        self.recommender = FakeRecommender()
        self.health = health.HealthServicer(experimental_non_blocking=True)  # as the real servers
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        recommender_pb2_grpc.add_RecommenderServicer_to_server(self.recommender, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        address = f"{host}:0"
        self.port = (
            self.server.add_secure_port(address, credentials) if credentials else self.server.add_insecure_port(address)
        )
        self.address = f"{host}:{self.port}"
        self.server.start()
        self.set_serving(True)

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set(RECOMMENDER, status)

    def calls(self, method: str = "Recommend") -> int:
        return len(self.recommender.requests(method))

    def stop(self) -> None:
        self.server.stop(0)
