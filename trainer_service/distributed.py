"""Data-parallel training of the neural kinds on Ray Train.

The trainer process stays the driver. It loads and splits the data once (it
needs the split to evaluate anyway), hands it to the workers through Ray's
object store (so workers on other machines need no copy of the files), and
keeps evaluation, the quality gate and publishing on the one in-process code
path: a distributed job publishes exactly like a local one.

Ray Train's ``TensorflowTrainer`` starts N workers and sets ``TF_CONFIG``;
each worker runs ``training.train_model`` under a
``MultiWorkerMirroredStrategy``, which keeps the copies of the weights equal
by summing gradients every step. Every worker holds the same split and builds
the same seeded input pipeline; the strategy hands each its share of every
global batch (``training.training_dataset``). A small channel actor connects the two
sides: rank 0 sends it per-epoch progress and, at the end, its trained
vectors (so nothing is written to storage and there is no checkpoint to
clean up); the driver sends it a cancel flag that every worker polls.

Ray is imported here only, and only by a trainer started with ``--workers``
above 1: the default ``--workers 1`` never loads or starts it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import pickle
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from movierec_common import launch, tfenv  # tfenv's import sets the TensorFlow environment that workers are given
from movierec_common.logs import event
from trainer_service.errors import Cancelled, DistributedTrainingFailed

if TYPE_CHECKING:  # both import TensorFlow, which a Ray worker may import only after its strategy exists
    from trainer_service.model_kind import TrainedModel, TrainingRun

log = logging.getLogger(__name__)

ENGINE_RAY = "ray_train"
# How often a worker asks the channel whether the job was cancelled, and the
# driver asks it for progress: an actor call per batch would cost more than
# the batch does.
POLL_SECONDS = 0.5
# Gradients are all-reduced in packs of up to this size rather than one
# collective per variable: on MovieLens 100K that halved two workers' epoch.
PACK_BYTES = 32 * 1024 * 1024
# Set (unless already set) before ``ray`` is imported; a local Ray's processes
# inherit them.
RAY_ENVIRONMENT = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage report sent home
    "RAY_TRAIN_V2_ENABLED": "1",     # the default in 2.60; this module relies on V2's behaviour
}
# Only for the private local Ray, and forced (an operator's shell cannot loosen them): its processes bind
# loopback only, and every call into it carries a token only this trainer holds. Ray treats a node as
# single-machine (its node address 127.0.0.1, so its gRPC servers bind loopback) only when
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is 0; ``ray.init(_node_ip_address="127.0.0.1")`` is turned back into
# the machine's address (ray._private.services.resolve_ip_for_localhost). Measured on Ray 2.60 with a
# 2-worker job: without these, the driver, GCS, raylet, every actor and the Ray Train workers listened
# on ``::`` and the runtime-env agent on the machine's address, and anyone who could reach them could
# run code as the trainer. A cluster (--ray-address) keeps its own settings: see the README.
LOCAL_RAY_ENVIRONMENT = {"RAY_AUTH_MODE": "token", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# Where Ray's processes read the private Ray's token (RAY_AUTH_TOKEN_PATH, in the trainer's 0700 temp
# folder): a file, never a value in the environment or on a command line.
TOKEN_FILE_NAME = "auth_token"
# tfenv's settings, handed to every worker of the job: a cluster's workers do not
# inherit this process's environment, and Ray Train imports TensorFlow in them
# before our code runs (TFRS then finds Keras 3 without TF_USE_LEGACY_KERAS).
WORKER_ENVIRONMENT = ("TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "ABSL_MIN_LOG_LEVEL",
                      "GRPC_VERBOSITY", "MOVIEREC_TF_VERBOSE")


class _Channel:
    """The job's meeting point: progress and the result from rank 0, the cancel flag from the driver.

    Holds plain data only (dicts, bytes), so this actor never imports
    TensorFlow.
    """

    def __init__(self) -> None:
        self._phase = ""
        self._collective: list[str] = []
        self._epochs: list[dict[str, Any]] = []
        self._cancelled = False
        self._result: bytes | None = None

    def set_phase(self, phase: str, collective: list[str] | None = None) -> None:
        self._phase = phase
        self._collective = collective or self._collective

    def collective(self) -> list[str]:
        return self._collective

    def add_epoch(self, report: dict[str, Any]) -> None:
        self._epochs.append(report)

    def progress(self, seen: int) -> tuple[str, list[dict[str, Any]]]:
        return self._phase, self._epochs[seen:]

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled

    def finish(self, result: bytes) -> None:
        self._result = result

    def result(self) -> bytes | None:
        return self._result


class _CancelPoll:
    """``should_stop`` for a worker: the driver's cancel flag, read at most every POLL_SECONDS."""

    def __init__(self, channel: Any):
        self._channel = channel
        self._asked = 0.0
        self._cancelled = False

    def __call__(self) -> bool:
        import ray

        now = time.monotonic()
        if not self._cancelled and now - self._asked >= POLL_SECONDS:
            self._asked = now
            self._cancelled = ray.get(self._channel.cancelled.remote())
        return self._cancelled


def _multi_worker_strategy() -> Any:
    """The strategy, made before anything else touches TensorFlow in this worker.

    MultiWorkerMirroredStrategy configures collective ops, which TensorFlow
    allows only before its runtime starts ("Collective ops must be configured
    at program startup"), and ``tfenv.tensorflow()`` starts it; so the raw
    module is used first, after tfenv has set the environment.
    """
    import ray
    import tensorflow as tf  # raw, see the docstring; tfenv (imported above) has set its environment

    # One intra-op pool the size of this worker's CPU share: N workers each
    # using every core would fight over them.
    cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 0))
    if cpus > 0:
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(cpus)
    options = tf.distribute.experimental.CommunicationOptions(bytes_per_pack=PACK_BYTES)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    tfenv.tensorflow()
    return strategy


def _collective_addresses() -> list[str]:
    """Where the job's TensorFlow collective servers listen (TF_CONFIG's workers, as Ray Train set it).

    Logged by the driver because TensorFlow binds each of these ports on every interface, whatever
    the host in TF_CONFIG: tensorflow/core/distributed_runtime/rpc/grpc_server_lib.cc listens on
    "0.0.0.0:<port>" with no option to narrow it, and the servers are unauthenticated.
    """
    try:
        return [str(address) for address in json.loads(os.environ.get("TF_CONFIG", "{}"))["cluster"]["worker"]]
    except (ValueError, KeyError, TypeError):
        return []


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the same training code as in-process, under the multi-worker strategy."""
    strategy = _multi_worker_strategy()
    import ray

    # These import TensorFlow: only after the strategy exists.
    from trainer_service.model_kind import EpochReport, TrainingRun
    from trainer_service.neural_kinds import is_chief
    from trainer_service.training import train

    channel = config["channel"]
    chief = is_chief(strategy)
    split = ray.get(config["split"])
    if chief:
        channel.set_phase.remote("training", _collective_addresses())

    def on_epoch(report: EpochReport) -> None:
        channel.add_epoch.remote(dataclasses.asdict(report))

    trained = train(TrainingRun(kind=config["kind"], split=split, hyperparameters=config["hyperparameters"],
                                seed=config["seed"], on_epoch=on_epoch if chief else None,
                                should_stop=_CancelPoll(channel), refit_settings=config.get("refit_settings"),
                                strategy=strategy))
    if chief:
        ray.get(channel.finish.remote(pickle.dumps(trained, protocol=pickle.HIGHEST_PROTOCOL)))


def _failure_reason(exc: BaseException) -> str:
    """A worker's death or error in one line, for the job's record (Ray's own text spans pages).

    Deaths come first: when one worker dies, its peers fail in their next
    collective, and the death is the cause an operator needs to read.
    """
    failures = getattr(exc, "worker_failures", None) or {}
    found = []
    for rank, error in sorted(failures.items()):
        text = str(error).strip()
        died = "died" in text.lower() or "actor" in type(error).__name__.lower()
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        summary = next((line for line in lines if "died" in line.lower() or "killed" in line.lower()), None)
        if summary is None:
            summary = lines[-1] if lines else type(error).__name__
        found.append((not died, rank, f"rank {rank} {'died' if died else 'failed'}: {summary[:300]}"))
    parts = [part for _, _, part in sorted(found)]
    if not parts:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        parts.append((lines[0] if lines else type(exc).__name__)[:300])
    return "; ".join(parts)


def private_ray_environment(folder: str) -> dict[str, str]:
    """The environment of a private local Ray kept in ``folder``: loopback only, and a fresh token for it.

    The token (256 random bits) goes into a file only this user can read; Ray's processes inherit
    RAY_AUTH_TOKEN_PATH, so the token itself is on no command line and in no environment. A new one
    each start: nothing outlives the trainer that could be replayed.
    """
    path = os.path.join(folder, TOKEN_FILE_NAME)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as token_file:
        token_file.write(secrets.token_hex(32))
    return {**LOCAL_RAY_ENVIRONMENT, "RAY_AUTH_TOKEN_PATH": path}


def _require_loopback(ray: Any) -> None:
    """Refuses a private Ray that came up on another address (``ray`` imported before the environment
    was set, say): it would be reachable from the network."""
    address = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(address).is_loopback:
        ray.shutdown()
        raise RuntimeError(f"the private Ray came up on {address}, not on loopback; refusing to use it")


class RayTraining:
    """The trainer's link to Ray: a private local Ray it starts and removes, or a cluster it joins.

    One job at a time (the job manager's worker thread) calls :meth:`train`.
    """

    def __init__(self, address: str | None, max_workers: int):
        self.address = address
        self.max_workers = max_workers
        self._lock = threading.Lock()
        self._connected = False
        self._own_dir: str | None = None   # the local Ray's temp folder, removed at shutdown
        self._runs_dir: str | None = None  # Ray Train's storage_path; each job's folder is removed after it

    def connect(self) -> Any:
        """Starts or joins Ray (once); returns the ``ray`` module.

        The trainer calls this from its main thread at start-up, before it
        installs its own signal handlers: ``ray.init`` installs a native
        SIGTERM handler that aborts the process, and only a handler installed
        after it (the trainer's graceful stop) takes precedence. It also makes
        an unreachable ``--ray-address`` fail the start, not the first job.
        """
        with self._lock:
            if self._connected:
                import ray

                return ray
            for name, value in RAY_ENVIRONMENT.items():
                os.environ.setdefault(name, value)
            if not self.address:
                # Short and under /tmp: Ray's socket paths must fit in 107 bytes. mkdtemp makes it 0700.
                self._own_dir = tempfile.mkdtemp(prefix="movierec-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
                # Everything this Ray starts ends with the trainer, also one killed with SIGKILL: Ray's own
                # fate-sharing misses its agents (upstream issue #52385), so a watchdog reaps them (and the token).
                launch.reap_at_exit(self._own_dir)
                # Before ``import ray``: its constants read the environment once, at import.
                os.environ.update(private_ray_environment(self._own_dir))
            import ray  # only a trainer with --workers > 1 loads Ray

            # Ray's warnings become this process's JSON log lines; its info chatter goes.
            ray_logger = logging.getLogger("ray")
            ray_logger.handlers[:] = []
            ray_logger.propagate = True
            ray_logger.setLevel(logging.WARNING)
            started = time.monotonic()
            runtime_env = {"env_vars": {name: os.environ[name] for name in WORKER_ENVIRONMENT if name in os.environ}}
            quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING,
                                     "configure_logging": False, "namespace": "movierec", "runtime_env": runtime_env}
            if self.address:
                ray.init(address=self.address, **quiet)
                self._runs_dir = tempfile.mkdtemp(prefix="movierec-ray-runs-")
            else:
                assert self._own_dir is not None  # made above
                self._runs_dir = os.path.join(self._own_dir, "runs")
                os.makedirs(self._runs_dir)
                # Enough CPU slots for the largest job even on a smaller machine (oversubscribed then, not stuck).
                ray.init(num_cpus=max(os.cpu_count() or 1, self.max_workers), _temp_dir=self._own_dir,
                         include_dashboard=False, **quiet)
                _require_loopback(ray)
            self._connected = True
            event(log, "ray connected", address=self.address or "local", seconds=round(time.monotonic() - started, 2),
                  temp_dir=self._own_dir or "")
            return ray

    def train(self, run: TrainingRun, on_phase: Callable[[str], None] | None = None) -> TrainedModel:
        """Trains ``run`` on ``run.workers`` Ray workers; returns rank 0's ``TrainedModel``.

        Each worker gets the run's data (kind, split, hyperparameters, seed,
        refit settings); its progress comes back to ``run.on_epoch`` here, and
        ``run.should_stop`` is relayed to the workers. Raises ``Cancelled``
        when ``should_stop`` asked for it, and ``DistributedTrainingFailed``
        when a worker failed or died (no retry: a half-finished data-parallel
        run cannot be resumed here).
        """
        from trainer_service.model_kind import EpochReport

        workers, run_name, on_epoch, should_stop = run.workers, run.name, run.on_epoch, run.should_stop
        started = time.monotonic()
        if on_phase:
            on_phase("starting ray workers")
        ray = self.connect()
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.tensorflow import TensorflowTrainer

        channel = ray.remote(num_cpus=0)(_Channel).remote()
        split_ref = ray.put(run.split)
        assert self._runs_dir is not None  # connect() made it
        storage = os.path.join(self._runs_dir, run_name)
        trainer = TensorflowTrainer(
            _train_worker,
            train_loop_config={"kind": run.kind, "split": split_ref, "hyperparameters": run.hyperparameters,
                               "seed": run.seed, "channel": channel, "refit_settings": run.refit_settings},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": 1}),
            # No retries of any kind: a worker lost mid-run fails the job, and so
            # does a cluster that cannot place the workers within Ray Train's
            # start-up timeout (60 s), instead of retrying forever.
            run_config=RunConfig(name=run_name, storage_path=self._runs_dir,
                                 # Train V2's FailureConfig (RAY_TRAIN_V2_ENABLED) takes the last two; Ray's
                                 # static types describe V1's.
                                 failure_config=FailureConfig(  # type: ignore[call-arg]
                                     max_failures=0, controller_failure_limit=0, max_preemption_failures=0)),
        )
        outcome: dict[str, Any] = {}

        def fit() -> None:
            try:
                outcome["result"] = trainer.fit()
            except BaseException as exc:  # handed to the job's thread below
                outcome["error"] = exc

        runner = threading.Thread(target=fit, name=f"ray-fit-{run_name}", daemon=True)
        runner.start()
        phase, seen, cancel_sent, ready = "", 0, False, 0.0
        try:
            while True:
                finished = not runner.is_alive()
                new_phase, epochs = ray.get(channel.progress.remote(seen))
                if new_phase != phase:  # "training": rank 0 has its strategy and data
                    phase, ready = new_phase, time.monotonic() - started
                    if on_phase:
                        on_phase(phase)
                    event(log, "ray workers ready", job_id=run_name, workers=workers, seconds=round(ready, 1),
                          tensorflow_collective_servers=ray.get(channel.collective.remote()))
                for report in epochs:
                    if on_epoch:
                        on_epoch(EpochReport(**report))
                seen += len(epochs)
                if not cancel_sent and should_stop is not None and should_stop():
                    channel.cancel.remote()
                    cancel_sent = True
                if finished:
                    break
                runner.join(POLL_SECONDS)
            if cancel_sent:
                raise Cancelled("training cancelled on request")
            if "error" in outcome:
                reason = _failure_reason(outcome["error"])
                event(log, "ray training failed", logging.WARNING, job_id=run_name, reason=reason)
                raise DistributedTrainingFailed(f"distributed training on {workers} Ray workers failed: {reason}")
            payload = ray.get(channel.result.remote())
            if payload is None:
                raise DistributedTrainingFailed("distributed training ended without a result from rank 0")
            trained: TrainedModel = pickle.loads(payload)
        finally:
            if runner.is_alive():  # the driver loop itself failed: stop the run before its channel goes
                try:
                    channel.cancel.remote()
                except Exception as exc:  # Ray is already gone
                    log.debug("cancel not sent: %s", exc)
                runner.join(60)
            try:
                ray.kill(channel)
            except Exception as exc:  # Ray already shut down (the trainer is stopping): nothing left to kill
                log.debug("channel not killed: %s", exc)
            del split_ref
            shutil.rmtree(storage, ignore_errors=True)
        trained.distribution = {**trained.distribution, "engine": ENGINE_RAY, "workers": workers,
                                "ray_address": self.address or "local", "ray": ray.__version__,
                                "worker_train_seconds": round(trained.train_seconds, 3)}
        trained.train_seconds = time.monotonic() - started
        event(log, "ray training finished", job_id=run_name, workers=workers,
              num_replicas_in_sync=trained.distribution["num_replicas_in_sync"],
              seconds=round(trained.train_seconds, 1), workers_ready_seconds=round(ready, 1),
              worker_train_seconds=round(trained.distribution["worker_train_seconds"], 1))
        return trained

    def shutdown(self) -> None:
        """Disconnects; a local Ray this trainer started stops with all its processes, and its folder goes."""
        with self._lock:
            if self._connected:
                import ray

                ray.shutdown()
                self._connected = False
                event(log, "ray stopped", address=self.address or "local")
            for folder in (self._own_dir, self._runs_dir):
                if folder:
                    shutil.rmtree(folder, ignore_errors=True)
            self._own_dir = self._runs_dir = None
