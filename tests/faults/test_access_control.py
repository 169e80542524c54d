"""Access control on the real servers: bearer tokens on every RPC that needs
one (missing and wrong), open ones left open, TLS and mutual TLS, and tokens
never taken from the command line."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import RecommenderClient, TrainerClient, Unauthenticated, Unavailable
from movierec.v1 import recommender_pb2, trainer_pb2
from movierec_common.artifact import VersionMetadata
from tests.artifacts import tiny_artifact
from tests.servers import ServerProcess, start_recommender, start_trainer
from trainer_service.publisher import publish

TOKEN = "s3cret-token-0123456789"
WRONG_TOKEN = "wrong-token-0123456789"
# The trainer's RPCs that change something; every other one is open to read.
TRAINER_MUTATIONS = {"Train", "CancelJob", "PinVersion"}


def _cert(directory, name: str):
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return key, cert


def _codes_per_rpc(channel: grpc.Channel, module, service: str, token: str | None) -> dict[str, grpc.StatusCode]:
    """Calls every RPC of ``service`` (from its descriptor, so a new RPC is covered at once) with an empty
    request and ``token`` (None: no authorization header); the status code of each."""
    descriptor = module.DESCRIPTOR.services_by_name[service]
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    codes = {}
    for method in descriptor.methods:
        factory = channel.unary_stream if method.server_streaming else channel.unary_unary
        call = factory(f"/{descriptor.full_name}/{method.name}", request_serializer=lambda b: b,
                       response_deserializer=lambda b: b)
        try:
            answer = call(b"", timeout=10, metadata=metadata)
            if method.server_streaming:
                next(iter(answer), None)
                answer.cancel()
            codes[method.name] = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            codes[method.name] = exc.code()
    return codes


def test_trainer_mutations_need_a_token_reads_do_not(tmp_path, monkeypatch):
    monkeypatch.delenv("MOVIEREC_TOKEN", raising=False)
    trainer = start_trainer(tmp_path / "models", tmp_path, env={"MOVIEREC_TOKENS": TOKEN, "MOVIELENS_DIR": ""})
    try:
        with grpc.insecure_channel(trainer.address) as channel:
            methods = {m.name for m in trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].methods}
            assert TRAINER_MUTATIONS <= methods
            for token in (None, WRONG_TOKEN, ""):
                codes = _codes_per_rpc(channel, trainer_pb2, "Trainer", token)
                refused = {name for name, code in codes.items() if code == grpc.StatusCode.UNAUTHENTICATED}
                assert refused == TRAINER_MUTATIONS, (token, codes)
            codes = _codes_per_rpc(channel, trainer_pb2, "Trainer", TOKEN)
            assert grpc.StatusCode.UNAUTHENTICATED not in codes.values(), codes
        with TrainerClient(trainer.address, timeout=10, token="") as anonymous:
            with pytest.raises(Unauthenticated) as caught:
                anonymous.train("two_tower")
            assert "Bearer" in caught.value.details
            assert anonymous.list_jobs() == []
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


@pytest.mark.parametrize("module", ["trainer_service.server", "recommender_service.server"])
@pytest.mark.parametrize("flag", ["--token", "--tokens"])
def test_a_token_is_never_taken_from_the_command_line(tmp_path, module, flag):
    """Where every user of the machine would read it (the process list) and the shell keeps it (history):
    the server refuses to start, says where tokens go, and does not repeat the token. (argparse alone
    would take --token for an abbreviation of --token-file and print the token back as a file name.)"""
    result = subprocess.run(
        [sys.executable, "-m", module, "--port", "0", "--model-root", str(tmp_path / "models"), flag, TOKEN],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "--token-file" in result.stderr and "MOVIEREC_TOKENS" in result.stderr
    assert TOKEN not in result.stderr + result.stdout


def test_recommender_with_required_token_and_mutual_tls(tmp_path):
    server_key, server_cert = _cert(tmp_path, "localhost")
    client_key, client_cert = _cert(tmp_path, "client")
    model_root = tmp_path / "models"
    publish(str(model_root), tiny_artifact(), VersionMetadata(model_kind="test"))
    recommender = ServerProcess(
        "recommender_service.server",
        ["--model-root", str(model_root), "--require-token", "--tls-cert", str(server_cert),
         "--tls-key", str(server_key), "--tls-client-ca", str(client_cert)],
        tmp_path / "recommender.log", env={"MOVIEREC_TOKENS": TOKEN}).start()
    target = f"localhost:{recommender.port}"
    tls = dict(root_certificates=server_cert, client_cert=client_cert, client_key=client_key)
    credentials = grpc.ssl_channel_credentials(server_cert.read_bytes(), client_key.read_bytes(),
                                               client_cert.read_bytes())
    try:
        with RecommenderClient(target, timeout=10, token=TOKEN, **tls) as rc:
            rc.wait_until_serving(timeout=60)  # health stays open
            assert len(rc.recommend("1", k=3).items) == 3
        with grpc.secure_channel(target, credentials) as channel:
            for token in (None, WRONG_TOKEN, ""):  # every RPC, the token missing or wrong
                codes = _codes_per_rpc(channel, recommender_pb2, "Recommender", token)
                assert set(codes.values()) == {grpc.StatusCode.UNAUTHENTICATED}, (token, codes)
            codes = _codes_per_rpc(channel, recommender_pb2, "Recommender", TOKEN)
            assert grpc.StatusCode.UNAUTHENTICATED not in codes.values(), codes
            assert codes["GetModelStatus"] == grpc.StatusCode.OK
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(service="movierec.v1.Recommender"),
                                timeout=10).status == health_pb2.HealthCheckResponse.SERVING
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
    publish(str(model_root), tiny_artifact(), VersionMetadata(model_kind="test"))
    recommender = start_recommender(model_root, tmp_path)
    try:
        with RecommenderClient(recommender.address, timeout=10, token="") as rc:
            rc.wait_until_serving(timeout=60)
            assert rc.recommend("1", k=2).model_version == 1
        with grpc.insecure_channel(recommender.address) as channel:
            codes = _codes_per_rpc(channel, recommender_pb2, "Recommender", None)
            assert grpc.StatusCode.UNAUTHENTICATED not in codes.values(), codes
    finally:
        recommender.terminate()
