"""The ingestion benchmark runs end to end on a tiny budget, so it cannot rot. Speed is not judged (CI shares its
cores); correctness is: every interaction a recommender acknowledged is in the store exactly once, as sent."""

from __future__ import annotations

import json

import pytest

from benchmarks import ingestion

pytestmark = pytest.mark.slow


def test_tiny_ingestion_benchmark_measures_both_stores_and_loses_nothing(postgres_url, tmp_path, capsys):
    out = tmp_path / "ingestion.json"
    assert ingestion.main(["--tiny", "--postgres-url", postgres_url, "--out", str(out)]) == 0
    report = json.loads(out.read_text())

    assert [part["store"] for part in report["stores"]] == ["sqlite", "postgresql"]
    for part in report["stores"]:
        store = part["store"]
        throughput = part["throughput"]
        assert len(throughput["rounds"]) == 1 and throughput["batch"] == 100, store
        assert throughput["median_per_s"] > 0 and throughput["rounds"][0]["errors"] == 0, store
        assert throughput["rounds"][0]["cpu_us_per_interaction"]["recommender"] > 0, store
        assert throughput["rounds"][0]["store_rows_before"] == 0, store  # each store starts empty

        latency = part["latency"]
        for condition in ("without", "with"):
            assert latency[condition]["calls"] > 0 and latency[condition]["errors"] == 0, (store, condition)
            assert 0 < latency[condition]["p50_ms"] <= latency[condition]["p99_ms"], (store, condition)
        assert latency["with"]["ingested_per_s_median"] > 0 and latency["with"]["ingest_errors"] == 0, store
        assert latency["p99_ratio"] is not None and latency["p99_ratio"] > 0, store

        check = part["check"]
        assert check["ok"], (store, check["examples"])
        assert check["acknowledged"] > 0 and check["found_once"] == check["acknowledged"], store
        assert check["missing"] == check["stored_more_than_once"] == check["content_differs"] == 0, store
        assert check["rows_in_store"] == check["acknowledged"] + check["stored_without_acknowledgement"], store
        assert check["distinct_sequences"] == check["rows_in_store"], store
        assert part["status_after"]["fresh_users"] > 0 and part["status_after"]["events_problem"] == "", store

    tracking = report["tracking"]
    assert set(tracking["rows"]) == {"events none", "events on"}
    assert all(row["calls"] > 0 and row["errors"] == 0 for row in tracking["rows"].values())
    assert tracking["p99_ratio"] is not None

    names = [target["name"] for target in report["targets"]]
    assert sum("interactions/s acknowledged" in name for name in names) == 2
    assert sum("Recommend p99" in name for name in names) == 2
    missing_targets = [t for t in report["targets"] if "missing" in t["name"]]
    assert len(missing_targets) == 2 and all(t["passed"] for t in missing_targets)
    printed = capsys.readouterr().out
    assert "| store | acknowledged/s (median) |" in printed and "Store check" in printed
    assert "| events none |" in printed
