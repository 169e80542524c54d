"""The cross-replica freshness benchmark runs end to end on a tiny budget, so it cannot rot. Speed is not judged
(CI shares its cores); correctness is: every sample is observed on every other replica, and its writer's next
answer already reflects it."""

from __future__ import annotations

import json

import pytest

from benchmarks import freshness

pytestmark = pytest.mark.slow


def test_tiny_freshness_benchmark_observes_every_sample_on_every_other_replica(postgres_url, tmp_path, capsys):
    out = tmp_path / "freshness.json"
    assert freshness.main(["--tiny", "--postgres-url", postgres_url, "--out", str(out)]) == 0
    report = json.loads(out.read_text())

    summary = report["summary"]
    assert summary["samples"] == 20 and summary["skipped"] == 0
    assert summary["observations"] == 40 and summary["not_observed"] == 0
    assert summary["writer_missed_own_write"] == 0
    each, every = summary["each_replica"], summary["every_replica"]
    assert each["count"] == 40 and every["count"] == 20
    assert 0 < each["p50_s"] <= each["p99_s"] <= each["max_s"] and every["p99_s"] >= each["p50_s"]
    assert summary["by_kind"]["visitor"]["count"] == 20 and summary["by_kind"]["known"]["count"] == 20

    replicas = {"replica-0", "replica-1", "replica-2"}
    assert {sample["writer"] for sample in report["samples"]} == replicas  # the writer rotates
    for sample in report["samples"]:
        watched = {observed["replica"] for observed in sample["observed"]}
        assert watched == replicas - {sample["writer"]}, sample
        assert all(observed["seconds"] is not None and observed["polls"] >= 1 for observed in sample["observed"])
    assert [t["passed"] for t in report["targets"]][-1]  # nothing unobserved, every write read back at once
    assert "| each other replica |" in capsys.readouterr().out
