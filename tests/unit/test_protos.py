"""The committed generated modules must be exactly what the .proto files produce."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_generated_code_matches_the_protos(tmp_path):
    # protoc runs in its own process: grpc_tools' compiler and pyarrow (imported
    # by earlier tests) each bundle protobuf/abseil, and loaded into one process
    # the compiler segfaults.
    subprocess.run([sys.executable, str(REPO_ROOT / "protos" / "generate.py"), str(tmp_path)], check=True)
    committed = REPO_ROOT / "protos"
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert fresh, "protoc generated nothing"
    stale = [str(p) for p in fresh if (committed / p).read_bytes() != (tmp_path / p).read_bytes()]
    assert stale == [], f"generated code is stale; run `python protos/generate.py`: {stale}"


def test_contract_names_other_clients_depend_on():
    from movierec.v1 import recommender_pb2, trainer_pb2

    trainer = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"]
    assert trainer.full_name == "movierec.v1.Trainer"
    assert {m.name for m in trainer.methods} >= {"Train", "GetJob", "ListJobs", "WatchJob", "CancelJob"}
    recommender = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"]
    assert recommender.full_name == "movierec.v1.Recommender"
    assert {m.name for m in recommender.methods} >= {"Recommend", "GetModelStatus"}
    assert [v.name for v in trainer_pb2.TrainJob.State.DESCRIPTOR.values][1:] == [
        "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]
    request = recommender_pb2.RecommendRequest(user_id="42", k=10)
    assert not request.HasField("exclude_seen")  # unset means "exclude", the default
    assert set(recommender_pb2.RecommendedItem.DESCRIPTOR.fields_by_name) == {"movie_id", "title", "score", "genres",
                                                                              "year"}
