"""Access control on the real servers: bearer tokens, TLS, mutual TLS."""

from __future__ import annotations

import subprocess
import sys

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import RecommenderClient, TrainerClient, Unauthenticated, Unavailable
from tests.artifacts import tiny_artifact
from tests.servers import ServerProcess, start_recommender, start_trainer
from trainer_service.publisher import publish

TOKEN = "s3cret-token-0123456789"


def _cert(directory, name: str):
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return key, cert


def test_trainer_mutations_need_a_token_reads_do_not(tmp_path, monkeypatch):
    monkeypatch.delenv("MOVIEREC_TOKEN", raising=False)
    trainer = start_trainer(tmp_path / "models", tmp_path, env={"MOVIEREC_TOKENS": TOKEN, "MOVIELENS_DIR": ""})
    try:
        cmdline = open(f"/proc/{trainer.process.pid}/cmdline", "rb").read()
        assert TOKEN.encode() not in cmdline
        with TrainerClient(trainer.address, timeout=10, token="") as anonymous:
            with pytest.raises(Unauthenticated) as caught:
                anonymous.train("two_tower")
            assert "Bearer" in caught.value.details
            with pytest.raises(Unauthenticated):
                anonymous.cancel_job("job-x")
            assert anonymous.list_jobs() == []
        with TrainerClient(trainer.address, timeout=10, token="wrong-token-0123456789") as wrong:
            with pytest.raises(Unauthenticated):
                wrong.train("two_tower")
        with TrainerClient(trainer.address, timeout=10, token=TOKEN) as allowed:
            job = allowed.train("two_tower", epochs=1)
            assert job.id and allowed.cancel_job(job.id).id == job.id
    finally:
        trainer.terminate()


def test_trainer_refuses_to_listen_beyond_loopback_without_tokens(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "trainer_service.server", "--host", "0.0.0.0", "--port", "0",
         "--model-root", str(tmp_path / "models")],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode != 0
    assert "needs tokens" in result.stderr


def test_recommender_with_required_token_and_mutual_tls(tmp_path):
    server_key, server_cert = _cert(tmp_path, "localhost")
    client_key, client_cert = _cert(tmp_path, "client")
    model_root = tmp_path / "models"
    publish(str(model_root), tiny_artifact(), {"model_kind": "test"})
    recommender = ServerProcess(
        "recommender_service.server",
        ["--model-root", str(model_root), "--require-token", "--tls-cert", str(server_cert),
         "--tls-key", str(server_key), "--tls-client-ca", str(client_cert)],
        tmp_path / "recommender.log", env={"MOVIEREC_TOKENS": TOKEN}).start()
    target = f"localhost:{recommender.port}"
    tls = dict(root_certificates=server_cert, client_cert=client_cert, client_key=client_key)
    try:
        with RecommenderClient(target, timeout=10, token=TOKEN, **tls) as rc:
            rc.wait_until_serving(timeout=60)  # health stays open
            assert len(rc.recommend("1", k=3).items) == 3
        with RecommenderClient(target, timeout=5, token="", **tls) as no_token:
            with pytest.raises(Unauthenticated):
                no_token.recommend("1", k=3)
        with RecommenderClient(target, timeout=5, token=TOKEN, root_certificates=server_cert) as no_client_cert:
            with pytest.raises(Unavailable):
                no_client_cert.recommend("1", k=3)
        with RecommenderClient(f"127.0.0.1:{recommender.port}", timeout=5, token=TOKEN) as plaintext:
            with pytest.raises(Unavailable):
                plaintext.recommend("1", k=3)
    finally:
        recommender.terminate()


def test_plain_recommender_stays_open_by_default(tmp_path):
    model_root = tmp_path / "models"
    publish(str(model_root), tiny_artifact(), {"model_kind": "test"})
    recommender = start_recommender(model_root, tmp_path)
    try:
        with RecommenderClient(recommender.address, timeout=10, token="") as rc:
            rc.wait_until_serving(timeout=60)
            assert rc.recommend("1", k=2).model_version == 1
    finally:
        recommender.terminate()
