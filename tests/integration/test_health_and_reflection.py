"""Before any model exists the recommender is up but NOT_SERVING and answers
UNAVAILABLE; once a version is published it turns SERVING by itself. Both
servers expose reflection, so grpcurl needs no proto files."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clients import RecommenderClient, Unavailable
from movierec_common.artifact import VersionMetadata
from tests.artifacts import tiny_artifact
from tests.servers import start_recommender
from trainer_service.publisher import publish


def _health(channel, service: str):
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _services(channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    return {s.name for r in responses for s in r.list_services_response.service}


def test_recommender_without_a_model_then_with_one(tmp_path):
    model_root = tmp_path / "models"
    recommender = start_recommender(model_root, tmp_path)
    try:
        channel = grpc.insecure_channel(recommender.address)
        assert _health(channel, "movierec.v1.Recommender") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert {"movierec.v1.Recommender", "grpc.health.v1.Health"} <= _services(channel)
        with RecommenderClient(recommender.address, timeout=5) as rc:
            with pytest.raises(Unavailable) as caught:
                rc.recommend("1", k=3)
            assert "no model is loaded yet" in caught.value.details
            assert rc.model_status().served_version in (0, None)

            publish(str(model_root), tiny_artifact(), VersionMetadata(model_kind="test"))
            rc.wait_until_serving(timeout=30)
            assert _health(channel, "movierec.v1.Recommender") == health_pb2.HealthCheckResponse.SERVING
            recs = rc.recommend("1", k=3)
            assert recs.model_version == 1 and len(recs.items) == 3
        channel.close()
    finally:
        recommender.terminate()


def test_trainer_reflection_and_health(tmp_path):
    from tests.servers import start_trainer

    trainer = start_trainer(tmp_path / "models", tmp_path)
    try:
        channel = grpc.insecure_channel(trainer.address)
        assert _health(channel, "movierec.v1.Trainer") == health_pb2.HealthCheckResponse.SERVING
        assert "movierec.v1.Trainer" in _services(channel)
        channel.close()
    finally:
        assert trainer.terminate() == 0  # SIGTERM; SIGKILL (a negative status) had it not stopped in 30 s
