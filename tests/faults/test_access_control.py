"""Access control on the real servers: bearer tokens on every RPC that needs
one (missing and wrong), open ones left open, TLS and mutual TLS, tokens
never taken from the command line nor accepted in plaintext beyond loopback,
and watchers that cannot starve the calls that change something."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import RecommenderClient, TrainerClient, Unauthenticated, Unavailable
from movierec.v1 import recommender_pb2, trainer_pb2
from movierec_common.artifact import VersionMetadata
from tests.artifacts import tiny_artifact
from tests.certs import self_signed
from tests.servers import ServerProcess, start_recommender, start_trainer
from trainer_service.publisher import publish

TOKEN = "s3cret-token-0123456789"
WRONG_TOKEN = "wrong-token-0123456789"
# The trainer's RPCs that change something; every other one is open to read.
TRAINER_MUTATIONS = {"Train", "CancelJob", "PinVersion", "HideMovies", "UnhideMovies"}


_cert = self_signed  # in-process, so no missing openssl can make these tests skip


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


TRAINER_READS = {"GetJob", "ListJobs", "WatchJob", "ListVersions", "ListHiddenMovies"}
SERVERS = {"trainer": ("trainer_service.server", []),
           "recommender": ("recommender_service.server", ["--require-token"])}


def _token_file(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text(TOKEN + "\n")
    return str(path)


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_tokens_beyond_loopback_without_tls_are_refused(tmp_path, server):
    """A token sent in plaintext across the network can be read and replayed by anyone on the path."""
    module, extra = SERVERS[server]
    process = ServerProcess(module, ["--host", "0.0.0.0", "--model-root", str(tmp_path / "models"),
                                     "--token-file", _token_file(tmp_path), *extra], tmp_path / "server.log")
    try:
        with pytest.raises(RuntimeError, match="exited with"):
            process.start(60)
    finally:
        process.terminate()
    log = (tmp_path / "server.log").read_text()
    assert "plaintext" in log and "--tls-cert" in log and "--allow-plaintext-tokens" in log, log[-2000:]
    assert TOKEN not in log


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_allow_plaintext_tokens_starts_and_says_so_in_the_log(tmp_path, server):
    module, extra = SERVERS[server]
    process = ServerProcess(module, ["--host", "0.0.0.0", "--model-root", str(tmp_path / "models"),
                                     "--token-file", _token_file(tmp_path), "--allow-plaintext-tokens", *extra],
                            tmp_path / "server.log").start(60)
    try:
        warnings = [line for line in (tmp_path / "server.log").read_text().splitlines()
                    if '"level": "warning"' in line and "--allow-plaintext-tokens" in line]
        assert len(warnings) == 1, (tmp_path / "server.log").read_text()[-2000:]
        with grpc.insecure_channel(process.address) as channel:
            service = "Trainer" if server == "trainer" else "Recommender"
            module_pb2 = trainer_pb2 if server == "trainer" else recommender_pb2
            refused = _codes_per_rpc(channel, module_pb2, service, None)
            allowed = _codes_per_rpc(channel, module_pb2, service, TOKEN)
        assert grpc.StatusCode.UNAUTHENTICATED in refused.values(), refused
        assert grpc.StatusCode.UNAUTHENTICATED not in allowed.values(), allowed
    finally:
        process.terminate()


def test_tokens_beyond_loopback_with_tls_start_without_a_warning(tmp_path):
    key, cert = _cert(tmp_path, "localhost")
    process = ServerProcess("trainer_service.server",
                            ["--host", "0.0.0.0", "--model-root", str(tmp_path / "models"), "--token-file",
                             _token_file(tmp_path), "--tls-cert", str(cert), "--tls-key", str(key)],
                            tmp_path / "server.log").start(60)
    try:
        assert "plaintext" not in (tmp_path / "server.log").read_text()
        with TrainerClient(f"localhost:{process.port}", timeout=10, token=TOKEN, root_certificates=cert) as tc:
            assert tc.list_jobs() == []
    finally:
        process.terminate()


def test_require_token_for_reads_protects_every_trainer_rpc(tmp_path, monkeypatch):
    monkeypatch.delenv("MOVIEREC_TOKEN", raising=False)
    trainer = start_trainer(tmp_path / "models", tmp_path, "--require-token-for-reads",
                            env={"MOVIEREC_TOKENS": TOKEN, "MOVIELENS_DIR": ""})
    try:
        with grpc.insecure_channel(trainer.address) as channel:
            for token in (None, WRONG_TOKEN):
                codes = _codes_per_rpc(channel, trainer_pb2, "Trainer", token)
                assert set(codes) == TRAINER_MUTATIONS | TRAINER_READS, codes
                assert set(codes.values()) == {grpc.StatusCode.UNAUTHENTICATED}, (token, codes)
            codes = _codes_per_rpc(channel, trainer_pb2, "Trainer", TOKEN)
            assert grpc.StatusCode.UNAUTHENTICATED not in codes.values(), codes
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(service="movierec.v1.Trainer"),
                                timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        trainer.terminate()


def test_require_token_for_reads_without_tokens_refuses_to_start(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "trainer_service.server", "--port", "0", "--require-token-for-reads",
         "--model-root", str(tmp_path / "models")],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode != 0
    assert "needs tokens" in result.stderr and "--require-token-for-reads" in result.stderr, result.stderr


def _first_answers(streams: list, within: float) -> list:
    """What each stream answered first: "OK", or (code, details); None where nothing came ``within`` seconds."""
    answers: list = [None] * len(streams)

    def first(index: int) -> None:
        try:
            next(streams[index])
            answers[index] = "OK"
        except grpc.RpcError as exc:
            answers[index] = (exc.code(), exc.details())

    threads = [threading.Thread(target=first, args=(i,), daemon=True) for i in range(len(streams))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + within
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return answers


def test_watchers_are_capped_and_never_starve_the_calls_that_change_something(tmp_path, movielens_dir, monkeypatch):
    """Job ids are public through ListJobs and each WatchJob holds a server thread while its job runs: 300
    anonymous watchers on a running job must not keep a token holder from Train or CancelJob."""
    monkeypatch.delenv("MOVIEREC_TOKEN", raising=False)
    trainer = start_trainer(tmp_path / "models", tmp_path,
                            env={"MOVIEREC_TOKENS": TOKEN, "MOVIELENS_DIR": str(movielens_dir)})
    channels = [grpc.insecure_channel(trainer.address) for _ in range(6)]
    streams: list = []
    try:
        with TrainerClient(trainer.address, timeout=30, token=TOKEN) as tc:
            running = tc.train("two_tower", epochs=50, hyperparameters={"patience": 50})
            request = trainer_pb2.GetJobRequest(job_id=running.id).SerializeToString()
            for i in range(300):
                watch = channels[i % len(channels)].unary_stream(
                    "/movierec.v1.Trainer/WatchJob", request_serializer=lambda b: b,
                    response_deserializer=trainer_pb2.TrainJob.FromString)
                streams.append(watch(request, timeout=300))
            answers = _first_answers(streams, within=30)

            queued = tc.train("two_tower", epochs=1)  # the token holder, while every accepted watcher still holds on
            assert tc.cancel_job(queued.id).state == "CANCELLED"
            assert tc.cancel_job(running.id).id == running.id

            assert None not in answers, f"{answers.count(None)} watchers got no answer in 30 s"
            accepted = [i for i, answer in enumerate(answers) if answer == "OK"]
            refused = [answer for answer in answers if answer != "OK"]
            assert {code for code, _ in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}, refused[:3]
            cap = int(re.search(r"at most (\d+) WatchJob streams", refused[0][1]).group(1))
            assert len(accepted) == cap and len(refused) == 300 - cap, (len(accepted), refused[0])
    finally:
        for stream in streams:
            stream.cancel()
        for channel in channels:
            channel.close()
        trainer.terminate()


def test_a_watcher_that_leaves_frees_its_slot(tmp_path, movielens_dir, monkeypatch):
    monkeypatch.delenv("MOVIEREC_TOKEN", raising=False)
    trainer = start_trainer(tmp_path / "models", tmp_path, env={"MOVIELENS_DIR": str(movielens_dir)})
    streams: list = []
    try:
        with grpc.insecure_channel(trainer.address) as channel, TrainerClient(trainer.address, timeout=30) as tc:
            running = tc.train("two_tower", epochs=50, hyperparameters={"patience": 50})
            watch = channel.unary_stream("/movierec.v1.Trainer/WatchJob",
                                         request_serializer=trainer_pb2.GetJobRequest.SerializeToString,
                                         response_deserializer=trainer_pb2.TrainJob.FromString)
            request = trainer_pb2.GetJobRequest(job_id=running.id)
            while True:  # fill every slot, then one more is refused
                streams.append(watch(request, timeout=300))
                try:
                    next(streams[-1])
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                    break
                assert len(streams) <= 64, "no cap on watchers"
            streams[0].cancel()
            deadline = time.monotonic() + 10
            while True:  # the freed slot is taken by the next watcher (the server notices within a heartbeat)
                again = watch(request, timeout=300)
                streams.append(again)
                try:
                    next(again)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline, exc
                    time.sleep(0.2)
            tc.cancel_job(running.id)
    finally:
        for stream in streams:
            stream.cancel()
        trainer.terminate()
