"""The scale benchmark runs end to end on a tiny budget, so it cannot rot (speed is never judged here)."""

from __future__ import annotations

import json

import pytest

from benchmarks import scale

pytestmark = pytest.mark.slow


def test_tiny_scale_benchmark_trains_publishes_serves_from_the_index_and_reports(tmp_path, capsys):
    out = tmp_path / "scale.json"
    assert scale.main(["--tiny", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    a, b = report["a"], report["b"]
    # (a): trained through the trainer, published with a faiss index, served from it.
    assert a["index"]["backend"] == "faiss" and a["index"]["nlist"] > 0
    assert a["train"]["epochs_run"] == 1 and a["train"]["ratings_per_s"] > 0
    check = a["recall_vs_serving_default"]
    assert check["errors"] == 0 and check["answers_not_k_distinct"] == 0
    assert check["recall_at_10"] >= 0.95
    for level in ("1", "32"):
        assert a["latency"][level]["errors"] == 0 and a["latency"][level]["calls"] > 0
    assert a["reload_calls"]["errors"] == 0
    assert a["memory"]["steady"]["total_mb"] > 0 and a["memory"]["reload_ratio_total"] > 0
    # (b): parsed in its own process, trained, compared with popularity.
    assert b["parse"]["ratings"] == scale.TINY_SIZES["b"]["ratings"]
    assert len(b["train"]["epochs"]) >= 1 and b["train"]["popularity_recall_at_10"] > 0
    # (c): the clustered long tail, measured by benchmarks/long_tail.py's code in a child process.
    c = report["c"]
    assert c["shape"] == scale.TINY_SIZES["c"] and c["shape"]["clusters_per_user"] == 2
    assert c["cluster_oracle"]["hit_at_10"] > c["global_popularity"]["hit_at_10"]
    assert [v["name"] for v in c["variants"]] == ["default"] and c["variants"][0]["softmax"] == "sampled"
    # (d): ann_serving's tiny run as a child: reloads with the rankings shipped and computed at load, no failed call.
    reload = report["d"]["reload"]
    assert [v["rankings"] for v in reload["versions"]] == ["shipped", "shipped", "at load"]
    for mode in ("shipped", "at load"):
        window = reload["latency"][f"during the reload, rankings {mode}"]
        assert window["calls"] > 0 and window["errors"] == 0
    names = [row["name"] for row in report["targets"]]
    assert len(names) == 10 + 6 and all(name.startswith("(d)") for name in names[10:])
    table = capsys.readouterr().out
    assert "recall@10 vs exact" in table and "Targets:" in table and str(out) in table
