"""Names both services and the client use are defined once (movierec.v1.vocabulary, security.is_loopback)
and agree with the .proto files and the trainer's per-kind tables."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from movierec.v1 import recommender_pb2, trainer_pb2, vocabulary
from movierec_common import security

ROOT = Path(__file__).resolve().parents[2]
SOURCE_PACKAGES = ("clients", "trainer_service", "recommender_service", "movierec_common", "benchmarks", "protos")


def test_job_and_version_states_are_the_protos_and_everyone_uses_them():
    from clients import TERMINAL_STATES, credentials, flags
    from clients import types as client_types
    from recommender_service import registry
    from trainer_service import jobs

    job_enum, version_enum = trainer_pb2.TrainJob.State, recommender_pb2.ModelVersion.State
    assert vocabulary.JOB_STATES == tuple(name for name in job_enum.keys() if name != "STATE_UNSPECIFIED")
    assert vocabulary.VERSION_STATES == tuple(name for name in version_enum.keys() if name != "STATE_UNSPECIFIED")
    for name in vocabulary.JOB_STATES:
        assert job_enum.Name(job_enum.Value(name)) == name
    assert vocabulary.FINAL_JOB_STATES == {"SUCCEEDED", "FAILED", "CANCELLED"}

    assert jobs.FINAL_STATES is vocabulary.FINAL_JOB_STATES and TERMINAL_STATES is vocabulary.FINAL_JOB_STATES
    assert client_types.JOB_STATES is vocabulary.JOB_STATES
    assert (registry.SERVING, registry.AVAILABLE, registry.LOADING, registry.REJECTED, registry.RETIRED) == \
        vocabulary.VERSION_STATES
    assert credentials.is_loopback is security.is_loopback
    assert flags.refuse_token_flags is security.refuse_token_flags


def test_every_model_kind_has_defaults_and_exactly_one_trainer():
    from clients import train_options
    from trainer_service import releases, training
    from trainer_service.model_kind import ModelKind
    from trainer_service.neural_kinds import NeuralKind

    # The trainer's registry is the vocabulary, in its order: each kind registered once, with its
    # defaults, and either neural (Keras' fit loop) or closed form, never both.
    assert tuple(training.KINDS) == vocabulary.MODEL_KINDS
    for name, kind in training.KINDS.items():
        assert isinstance(kind, ModelKind) and kind.name == name and kind.hyperparameters({}) == kind.defaults
        assert isinstance(kind, NeuralKind) != kind.closed_form
    # The release table's TFDS names are exactly the names a TrainRequest may give.
    assert releases.DATASET_NAMES == vocabulary.DATASET_NAMES
    assert train_options.MODEL_KINDS is vocabulary.MODEL_KINDS and train_options.HOLDOUTS is vocabulary.HOLDOUTS
    assert train_options.DATASET_NAMES is vocabulary.DATASET_NAMES


def test_the_neighbourhood_prefix_is_defined_once_beside_the_contract():
    from clients import render
    from trainer_service import tensorboard_runs

    # A string like this one is interned, so `is` cannot tell two definitions apart: read the source.
    defining = {path.relative_to(ROOT).as_posix() for package in SOURCE_PACKAGES
                for path in (ROOT / package).rglob("*.py")
                for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                if isinstance(node, ast.Assign)
                and any(isinstance(target, ast.Name) and target.id == "NEIGHBOURHOOD_PREFIX"
                        for target in node.targets)}
    assert defining == {"protos/movierec/v1/vocabulary.py"}
    assert vocabulary.NEIGHBOURHOOD_PREFIX == "neighbourhood_"  # on the wire: TrainJob.baseline_metrics' keys
    # The CLI and the trainer's TensorBoard writer read it from there (as pipeline.py does).
    for module in (render, tensorboard_runs):
        assert module.NEIGHBOURHOOD_PREFIX is vocabulary.NEIGHBOURHOOD_PREFIX


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("127.0.0.1:50051", True), ("[::1]:50051", True), ("localhost:50051", True), ("LocalHost:1", True),
    ("dns:///localhost:50051", True), ("dns://8.8.8.8/localhost:1", True), ("dns:localhost:1", True),
    ("ipv4:127.0.0.1:1,127.0.0.2:2", True), ("ipv6:[::1]:1", True), ("unix:/run/movierec.sock", True),
    ("", False), ("0.0.0.0", False), ("[::]", False), ("::", False), ("10.1.2.3:50051", False),
    ("example.com:50051", False), ("dns:///example.com:1", False), ("ipv4:127.0.0.1:1,10.0.0.1:2", False),
    ("localhost.example.com", False),
])
def test_one_loopback_test_for_hosts_addresses_and_targets(address, loopback):
    assert security.is_loopback(address) is loopback
