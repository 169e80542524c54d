"""Data-parallel training on Ray Train through the real trainer (``--workers 2``,
a local Ray it starts itself): the limit is enforced, two workers match one,
a killed worker fails the job cleanly, a SIGTERM mid-job cancels the job
and takes the trainer's Ray with it, and so does a SIGKILL of the trainer.

The tests share one trainer and run in file order (the last one stops it);
MovieLens 100K's ``ua`` split with a couple of epochs keeps the file under
three minutes on two cores, most of it Ray's start-up of each job's workers.
The loopback test and the killed-worker test look at the same long 2-worker
job (one Ray start-up, not two): the first inspects it, the second kills one
of its workers.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import time
from pathlib import Path

import grpc
import psutil
import pytest

from clients import InvalidArgument, TrainerClient
from tests.servers import describe, start_trainer, still_running

pytestmark = pytest.mark.slow

SEED = 7
EPOCHS = 2


@pytest.fixture(scope="module")
def ray_trainer(tmp_path_factory, movielens_dir):
    base = tmp_path_factory.mktemp("distributed")
    model_root = base / "models"
    trainer = start_trainer(model_root, base, "--workers", "2", env={"MOVIELENS_DIR": str(movielens_dir)})
    yield {"trainer": trainer, "model_root": model_root, "log": base / "trainer.log"}
    trainer.terminate()


@pytest.fixture(scope="module")
def long_ray_job(ray_trainer):
    """A 50-epoch 2-worker job past its first epoch (every worker and collective server up), and the versions
    the model root held before it; whoever ends it (the killed-worker test) does, else it is cancelled here."""
    trainer = ray_trainer["trainer"]
    before = _versions(ray_trainer["model_root"])
    with TrainerClient(trainer.address, timeout=30) as tc:
        running = tc.train("two_tower", holdout="ua", epochs=50, hyperparameters={"patience": 50}, seed=SEED)
        try:
            for job in tc.watch_job(running.id, timeout=300):
                if job.progress.epoch >= 1 or job.done:  # past the first epoch: every collective server is up
                    break
        except BaseException:
            tc.cancel_job(running.id)
            raise
    yield {"id": running.id, "job": job, "versions_before": before}
    if trainer.alive():
        with TrainerClient(trainer.address, timeout=30) as tc:
            if not tc.get_job(running.id).done:
                tc.cancel_job(running.id)
                tc.wait_for_job(running.id, timeout=120)


def _versions(model_root: Path) -> list[str]:
    return sorted(p.name for p in model_root.iterdir() if p.name.isdigit())


def _metadata(model_root: Path, version: int) -> dict:
    return json.loads((model_root / str(version) / "metadata.json").read_text())


def _ray_temp_dir(log: Path) -> Path:
    for line in log.read_text().splitlines():
        if '"ray connected"' in line:
            return Path(json.loads(line)["temp_dir"])
    raise AssertionError("the trainer never logged starting Ray")


def _train_workers(trainer_pid: int) -> list[psutil.Process]:
    """The live Ray Train worker processes under the trainer (Ray titles them ``ray::RayTrainWorker...``)."""
    found = []
    for child in psutil.Process(trainer_pid).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(child.cmdline()) and _alive(child):
                found.append(child)
        except psutil.Error:  # gone, or a zombie of an earlier job
            pass
    return found


def test_more_workers_than_the_limit_is_invalid_argument(ray_trainer):
    with TrainerClient(ray_trainer["trainer"].address, timeout=30) as tc, pytest.raises(InvalidArgument) as refused:
        tc.train("two_tower", epochs=1, workers=3)
    assert "--workers 2" in refused.value.details and "workers=3" in refused.value.details


def test_two_workers_match_one_worker_and_the_version_records_the_engine(ray_trainer):
    model_root = ray_trainer["model_root"]
    # A higher learning rate than the default so that two epochs already beat popularity (0.12).
    request = {"holdout": "ua", "epochs": EPOCHS, "seed": SEED, "hyperparameters": {"learning_rate": 0.01},
               "quality_gate_disabled": True}
    with TrainerClient(ray_trainer["trainer"].address, timeout=30) as tc:
        local = tc.train("two_tower", workers=1, refit=False, **request)  # the Ray job's refit is what is checked
        ray_job = tc.train("two_tower", **request)  # 0 = the trainer's --workers, 2
        local = tc.wait_for_job(local.id, timeout=300)
        seen = list(tc.watch_job(ray_job.id, timeout=300))
    distributed = seen[-1]
    assert local.state == "SUCCEEDED", local.error
    assert distributed.state == "SUCCEEDED", distributed.error

    one, two = _metadata(model_root, local.model_version), _metadata(model_root, distributed.model_version)
    assert one["distribution"] == {"engine": "in_process", "workers": 1, "num_replicas_in_sync": 1}
    assert two["distribution"]["engine"] == "ray_train"
    assert two["distribution"]["workers"] == 2 and two["distribution"]["num_replicas_in_sync"] == 2
    assert distributed.metrics["workers"] == 2 and distributed.metrics["num_replicas_in_sync"] == 2
    assert local.metrics["workers"] == 1
    assert (local.workers, distributed.workers) == (1, 0)  # the request, echoed (0 = the trainer's --workers)

    # Same global batch, same seed, same data order: the same optimisation up to float
    # rounding (summation order; the workers step without XLA).
    assert abs(distributed.metrics["recall_at_10"] - local.metrics["recall_at_10"]) <= 0.01, (
        distributed.metrics, local.metrics)
    assert distributed.loss_history == pytest.approx(local.loss_history, rel=1e-3)
    assert len(distributed.loss_history) == EPOCHS

    # Progress reached the watcher: Ray's start-up, then per-epoch losses from rank 0.
    phases = [job.progress.phase for job in seen]
    assert phases.index("starting ray workers") < phases.index("training") < phases.index("refitting")
    # The published model is a second Ray run on every rating, for the epochs evaluation chose.
    # (MovieLens 100K trains with the full softmax, which takes no popularity prior: 0.)
    assert two["refit"]["enabled"] and two["refit"]["settings"] == {"epochs": distributed.metrics["best_epoch"],
                                                                    "popularity_prior": 0.0}
    epochs = {job.progress.epoch: job.progress.loss for job in seen if job.progress.loss}
    assert sorted(epochs) == list(range(1, EPOCHS + 1))
    assert not list((_ray_temp_dir(ray_trainer["log"]) / "runs").iterdir()), "a finished job left Ray files"


def _listening(processes: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process title, address, port) of every TCP socket that ``processes`` listen on."""
    found = []
    for process in processes:
        try:
            title = f"{process.pid} {process.name()}: {' '.join(process.cmdline())[:80]}"
            found += [(title, c.laddr.ip, c.laddr.port) for c in process.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]
        except psutil.Error:  # gone meanwhile: it listens on nothing
            pass
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1, an IPv6 socket bound to IPv4's loopback
    return (mapped or ip).is_loopback


def _collective_ports(log: Path, job_id: str) -> set[int]:
    """The ports of ``job_id``'s TensorFlow collective servers, as the trainer logged them."""
    for line in log.read_text().splitlines():
        if '"ray workers ready"' in line and f'"{job_id}"' in line:
            return {int(address.rpartition(":")[2]) for address in json.loads(line)["tensorflow_collective_servers"]}
    raise AssertionError(f"no 'ray workers ready' line for {job_id}")


def test_the_private_ray_listens_on_loopback_only_and_asks_for_its_token(ray_trainer, long_ray_job):
    """During a 2-worker job, nothing in the trainer's process tree (the trainer, GCS, raylet, agents,
    actors, the Ray Train workers) listens beyond loopback but TensorFlow's collective servers, which
    TensorFlow binds on every interface; Ray's own gRPC refuses a caller without the trainer's token;
    the token is in a 0600 file, on no command line."""
    trainer = ray_trainer["trainer"]
    job = long_ray_job["job"]
    assert not job.done, job.error
    with TrainerClient(trainer.address, timeout=30) as tc:
        assert not tc.get_job(long_ray_job["id"]).done  # still running while its sockets are listed
        tree = [psutil.Process(trainer.process.pid), *psutil.Process(trainer.process.pid).children(recursive=True)]
        sockets = _listening(tree)
        assert len(_train_workers(trainer.process.pid)) == 2
        assert not tc.get_job(long_ray_job["id"]).done
    titles = " ".join(title for title, _, _ in sockets)
    assert "gcs_server" in titles and "raylet" in titles and "RayTrainWorker" in titles, sockets
    # The one exception, named in the log and the README: TensorFlow's collective server in each worker
    # listens on every interface whatever its address (grpc_server_lib.cc binds "0.0.0.0:<port>").
    collective = _collective_ports(ray_trainer["log"], long_ray_job["id"])
    assert len(collective) == 2, collective
    exposed = [s for s in sockets if not _is_loopback(s[1])
               and not ("RayTrainWorker" in s[0] and s[2] in collective)]
    assert exposed == [], "listening beyond loopback:\n" + "\n".join(map(str, exposed))

    gcs_port = next(port for title, _, port in sockets if "gcs_server" in title)
    ray_dir = _ray_temp_dir(ray_trainer["log"])
    token_file = ray_dir / "auth_token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32
    with grpc.insecure_channel(f"127.0.0.1:{gcs_port}") as channel:
        ask = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId", request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)
        for offered in ((), (("authorization", "Bearer " + "x" * len(token)),)):
            with pytest.raises(grpc.RpcError) as refused:
                ask(b"", timeout=10, metadata=offered)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value
        assert ask(b"", timeout=10, metadata=(("authorization", f"Bearer {token}"),))  # the token is the key
    for process in tree:
        try:
            assert token not in " ".join(process.cmdline()), process
        except psutil.Error:
            pass


def test_killing_a_ray_worker_fails_the_job_cleanly_and_the_next_job_succeeds(ray_trainer, long_ray_job):
    trainer, model_root = ray_trainer["trainer"], ray_trainer["model_root"]
    before = long_ray_job["versions_before"]
    with TrainerClient(trainer.address, timeout=30) as tc:
        job = tc.get_job(long_ray_job["id"])  # past its first epoch (the fixture waited for it)
        assert not job.done, job.error
        workers = _train_workers(trainer.process.pid)
        assert len(workers) == 2, [w.cmdline() for w in workers]
        os.kill(workers[-1].pid, signal.SIGKILL)

        failed = tc.wait_for_job(long_ray_job["id"], timeout=120)
        assert failed.state == "FAILED", failed
        assert re.search(r"Ray workers failed: rank \d died", failed.error), failed.error
        assert not failed.published and failed.model_version is None
        assert _versions(model_root) == before
        assert not list(model_root.glob(".tmp-*"))
        assert not list((_ray_temp_dir(ray_trainer["log"]) / "runs").iterdir()), "the failed job left Ray files"

        after = tc.wait_for_job(tc.train("two_tower", holdout="ua", epochs=1, seed=SEED, refit=False).id,
                                timeout=300)
    assert after.state == "SUCCEEDED", after.error
    assert after.published and _metadata(model_root, after.model_version)["distribution"]["workers"] == 2


def test_sigterm_mid_job_cancels_it_and_stops_the_local_ray(ray_trainer):
    trainer, model_root = ray_trainer["trainer"], ray_trainer["model_root"]
    ray_dir = _ray_temp_dir(ray_trainer["log"])
    before = _versions(model_root)
    with TrainerClient(trainer.address, timeout=30) as tc:
        running = tc.train("two_tower", holdout="ua", epochs=50, hyperparameters={"patience": 50}, seed=SEED)
        for job in tc.watch_job(running.id, timeout=300):
            if job.progress.phase == "training" or job.done:
                break
        assert not job.done, job.error
    descendants = psutil.Process(trainer.process.pid).children(recursive=True)
    assert len(_train_workers(trainer.process.pid)) == 2

    assert trainer.terminate() == 0  # graceful: the Ray job is cancelled, then Ray is shut down
    record = json.loads((model_root / ".jobs" / f"{running.id}.json").read_text())
    assert record["state"] == "CANCELLED", record
    assert _versions(model_root) == before and not list(model_root.glob(".tmp-*"))
    deadline = time.monotonic() + 20
    while True:
        alive = [p for p in descendants if _alive(p)]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not alive, [p.pid for p in alive]
    assert not ray_dir.exists()


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_kill_9_of_the_trainer_leaves_no_ray_process_behind(tmp_path):
    """Ray's own fate-sharing lets its agents (ray::DashboardAgent, ray::RuntimeEnvAgent) outlive a
    driver killed with SIGKILL (upstream Ray issue #52385); the trainer's watchdog reaps them, and
    everything else of the private Ray, within 5 s, and removes Ray's temp folder."""
    trainer = start_trainer(tmp_path / "models", tmp_path, "--workers", "2")
    tree: list[psutil.Process] = []
    try:
        ray_dir = _ray_temp_dir(tmp_path / "trainer.log")  # logged once ray.init returned
        tree = psutil.Process(trainer.process.pid).children(recursive=True)
        titles = " ".join(" ".join(p.cmdline()) for p in tree)
        assert "raylet" in titles and "ray::DashboardAgent" in titles, titles
        trainer.kill()
        left = still_running(tree, timeout=5.0)
        assert left == [], [describe(p) for p in left]
        assert not ray_dir.exists()
    finally:
        trainer.kill()
        for process in still_running(tree, timeout=0):
            process.kill()
