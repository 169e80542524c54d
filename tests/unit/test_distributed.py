"""The arithmetic that makes N replicas train like one, checked without Ray.

Two replicas of a ``MirroredStrategy`` on two logical CPUs stand in for two
workers (the same loss scaling and batch splitting apply; Ray only adds
processes). TensorFlow must be told about the logical devices before it
starts, so the checks run in a fresh interpreter: this file, run as a script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def probe() -> dict:
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_each_replica_steps_on_its_half_of_the_same_global_batch(probe):
    assert probe["replica_batch_sizes"] == [32, 32]
    assert probe["replicas_cover_the_global_batch"]


def test_summed_replica_gradients_equal_one_replica_gradient(probe):
    # Full-softmax two-tower: the same examples, so the same gradient up to summation order.
    assert probe["two_tower_max_gradient_error"] < 1e-5, probe
    assert probe["two_tower_loss_error"] < 1e-5, probe


def test_bpr_loss_is_scaled_by_the_global_batch(probe):
    # Each replica draws its own negatives, so only the scale can match: a
    # per-replica mean would double the summed gradient.
    assert 0.8 < probe["bpr_gradient_norm_ratio"] < 1.25, probe


def test_only_rank_0_is_the_chief():
    from trainer_service.neural_kinds import is_chief

    class Resolver:
        def __init__(self, task_id):
            self.task_id = task_id

    class Strategy:
        def __init__(self, task_id):
            self.cluster_resolver = Resolver(task_id)

    assert is_chief(Strategy(0)) and not is_chief(Strategy(1))
    assert is_chief(object())  # no cluster: the only process


def test_a_request_asks_for_at_most_the_trainers_workers():
    from trainer_service.config import TrainerConfig
    from trainer_service.errors import InvalidRequest
    from trainer_service.train_request import resolve_workers

    config = TrainerConfig(model_root="unused", workers=4)
    assert resolve_workers(0, config) == 4  # 0 = the trainer's --workers
    assert resolve_workers(2, config) == 2
    with pytest.raises(InvalidRequest, match="--workers 4"):
        resolve_workers(5, config)
    with pytest.raises(InvalidRequest):
        resolve_workers(-1, config)
    assert resolve_workers(0, TrainerConfig(model_root="unused")) == 1  # the default trainer: in-process


def _main() -> None:
    """Runs in a fresh interpreter: two logical CPUs, then the comparisons, as one JSON line."""
    import tensorflow as tf

    from movierec_common import tfenv  # noqa: F401 - environment first

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np

    from trainer_service.neural_kinds import training_dataset
    from trainer_service.training import kind_named, resolve_hyperparameters

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    n_users, n_items, batch = 50, 40, 64
    features = {"user": rng.integers(0, n_users, batch).astype(np.int32),
                "item": rng.integers(0, n_items, batch).astype(np.int32)}
    out: dict = {}

    dataset = strategy.experimental_distribute_dataset(training_dataset(features, batch, seed=1, shard_by_data=True))
    single = next(iter(training_dataset(features, batch, seed=1)))
    replicas = strategy.experimental_local_results(next(iter(dataset)))
    out["replica_batch_sizes"] = [int(r["user"].shape[0]) for r in replicas]
    out["replicas_cover_the_global_batch"] = bool(
        np.array_equal(np.concatenate([r["user"].numpy() for r in replicas]), single["user"].numpy())
        and np.array_equal(np.concatenate([r["item"].numpy() for r in replicas]), single["item"].numpy()))

    def compare(kind):
        hp = resolve_hyperparameters(kind, {})
        alone = kind_named(kind).build(n_users, n_items, hp)
        alone.compile(optimizer=tf.keras.optimizers.SGD())
        alone.compute_loss({k: tf.constant(v[:2]) for k, v in features.items()})
        with strategy.scope():
            mirrored = kind_named(kind).build(n_users, n_items, hp)
            mirrored.compile(optimizer=tf.keras.optimizers.SGD())
        mirrored.compute_loss({k: tf.constant(v[:2]) for k, v in features.items()})
        mirrored.set_weights(alone.get_weights())

        with tf.GradientTape() as tape:
            loss = alone.compute_loss(single, training=True)
        expected = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, alone.trainable_variables)]

        def step(inputs):
            with tf.GradientTape() as tape:
                loss = mirrored.compute_loss(inputs, training=True)
            return loss, [tf.convert_to_tensor(g) for g in tape.gradient(loss, mirrored.trainable_variables)]

        losses, grads = strategy.run(step, args=(next(iter(dataset)),))
        total = strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None).numpy()
        summed = [strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None).numpy() for g in grads]
        return float(loss.numpy()), float(total), expected, summed

    loss, total, expected, summed = compare("two_tower")
    out["two_tower_loss_error"] = abs(loss - total)
    out["two_tower_max_gradient_error"] = max(float(np.max(np.abs(e - s)))
                                              for e, s in zip(expected, summed, strict=True))
    _, _, expected, summed = compare("bpr")
    def norm(grads):
        return float(np.sqrt(sum(np.sum(g ** 2) for g in grads)))

    out["bpr_gradient_norm_ratio"] = norm(summed) / norm(expected)
    print(json.dumps(out))


if __name__ == "__main__":
    _main()


def test_a_workers_death_leads_the_jobs_error_whatever_its_rank():
    """A dead worker's peers fail in their next collective; the death is the cause, so it is named first."""
    from trainer_service.distributed import _failure_reason

    class ActorDiedError(Exception):
        pass

    class WorkerGroupError(Exception):
        def __init__(self, failures):
            super().__init__("Training failed")
            self.worker_failures = failures

    collective = RuntimeError("[[{{node CollectiveReduceV2_1}}]] [Op:__inference_train_function_2798]")
    death = ActorDiedError("The actor died unexpectedly before finishing this task.")
    for failures in ({0: collective, 1: death}, {0: death, 1: collective}):
        reason = _failure_reason(WorkerGroupError(failures))
        dead = next(rank for rank, error in failures.items() if error is death)
        assert reason.startswith(f"rank {dead} died: The actor died unexpectedly"), reason
        assert f"rank {1 - dead} failed: [[{{{{node CollectiveReduceV2_1}}}}]]" in reason, reason
    assert _failure_reason(RuntimeError("Ray is gone\nmore")) == "Ray is gone"


def test_the_private_rays_token_is_fresh_in_a_file_only_its_user_reads_and_in_no_environment(tmp_path):
    from trainer_service.distributed import private_ray_environment

    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    environment = private_ray_environment(str(first))
    token_file = first / "auth_token"
    assert environment["RAY_AUTH_TOKEN_PATH"] == str(token_file)
    assert environment["RAY_AUTH_MODE"] == "token" and environment["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text()
    assert len(token) == 64 and int(token, 16) >= 0  # 256 random bits, hex
    assert "RAY_AUTH_TOKEN" not in environment and token not in "".join(environment.values())
    assert (Path(private_ray_environment(str(second))["RAY_AUTH_TOKEN_PATH"])).read_text() != token
