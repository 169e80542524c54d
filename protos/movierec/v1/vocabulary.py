"""The names the services, the client and the benchmarks share, each defined once, beside the contract.

Where the contract defines a set of names (a job's state in trainer.proto, a
version's state in recommender.proto) it is read from the generated
descriptors, so the code cannot drift from the .proto: a state added there
without a place here fails at import. Model kinds and holdouts are plain
strings on the wire (``TrainRequest.model``, ``EvaluationSpec.holdout``,
``DatasetSpec.name``); the trainer decides which it accepts, and the lists
live here, in the contract's package, so a client depends on the contract
alone (no TensorFlow, pyarrow or trainer code). The trainer's registry of
model kinds and its table of MovieLens releases are checked against these
lists by the tests, so the trainer cannot drift from them.

Light on purpose: generated protobuf modules only.
"""

from __future__ import annotations

from typing import Any

from . import recommender_pb2, trainer_pb2

_JOB = trainer_pb2.TrainJob.State
_VERSION = recommender_pb2.ModelVersion.State


def enum_names(enum: Any) -> tuple[str, ...]:
    """An enum's names in the order the .proto declares them, without proto3's zero value (unset)."""
    return tuple(value.name for value in enum.DESCRIPTOR.values if value.number != 0)


# ---------------------------------------------------------------- jobs (trainer.proto TrainJob.State)

JOB_STATES = enum_names(_JOB)
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    _JOB.Name(_JOB.QUEUED), _JOB.Name(_JOB.RUNNING), _JOB.Name(_JOB.SUCCEEDED), _JOB.Name(_JOB.FAILED),
    _JOB.Name(_JOB.CANCELLED))
# A job in one of these never changes again (the proto's WatchJob ends on them).
FINAL_JOB_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})

# ---------------------------------------------------------------- versions (recommender.proto ModelVersion.State)

VERSION_STATES = enum_names(_VERSION)
SERVING, AVAILABLE, LOADING, REJECTED, RETIRED = (
    _VERSION.Name(_VERSION.SERVING), _VERSION.Name(_VERSION.AVAILABLE), _VERSION.Name(_VERSION.LOADING),
    _VERSION.Name(_VERSION.REJECTED), _VERSION.Name(_VERSION.RETIRED))

if set(JOB_STATES) != {QUEUED, RUNNING, CANCELLED} | FINAL_JOB_STATES or \
        set(VERSION_STATES) != {SERVING, AVAILABLE, LOADING, REJECTED, RETIRED}:
    raise ImportError(f"the .proto declares states this code does not handle: jobs {JOB_STATES}, "
                      f"versions {VERSION_STATES}")

# ---------------------------------------------------------------- what a TrainRequest may name

MODEL_KINDS = ("two_tower", "two_tower_dropout", "bpr", "ease", "dlae", "ease_blend", "sequential")
# MovieLens 100K's own train/test files (ua.base/ua.test, ...): only that release has them.
PREDEFINED_SPLITS = ("ua", "ub", "u1", "u2", "u3", "u4", "u5")
HOLDOUTS = ("random", "last_n_per_user") + PREDEFINED_SPLITS
# MovieLens releases a TrainRequest's dataset.name may ask for (tensorflow-datasets' names).
DATASET_NAMES = ("movielens/100k-ratings", "movielens/1m-ratings", "movielens/20m-ratings",
                 "movielens/25m-ratings", "movielens/latest-small-ratings")

# ---------------------------------------------------------------- what a job reports (TrainJob.baseline_metrics)

# A job's flat baseline metrics hold popularity's figures as they are and the neighbourhood-popularity
# baseline's under this prefix ("neighbourhood_recall_at_10"): the trainer writes them, the CLI's table and
# the TensorBoard runs split them apart again.
NEIGHBOURHOOD_PREFIX = "neighbourhood_"
