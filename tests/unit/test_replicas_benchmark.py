"""The replica-convergence benchmark runs end to end on a tiny budget, so it cannot rot (speed is not judged)."""

from __future__ import annotations

import json

import pytest

from benchmarks import replicas

pytestmark = pytest.mark.slow


def test_tiny_replicas_benchmark_publishes_and_every_replica_follows(tmp_path, capsys):
    out = tmp_path / "replicas.json"
    replicas.main(["--tiny", "--out", str(out)])  # exit status judges speed too; the report is checked here
    report = json.loads(out.read_text())
    assert report["replicas"] == 2 and len(report["rows"]) == 2
    for row in report["rows"]:
        assert all(seconds is not None and seconds >= 0 for seconds in row["seconds_per_replica"])
        assert all(load > 0 for load in row["load_seconds_per_replica"])
    assert [row["version"] for row in report["rows"]] == [2, 3]
    assert report["failed_calls"] == 0 and report["calls"] > 0
    assert report["versions_went_backwards"] is False
    assert "median convergence" in capsys.readouterr().out
