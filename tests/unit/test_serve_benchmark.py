"""The serving benchmark runs end to end and its JSON has the promised shape.

Runs ``benchmarks/serve.py --tiny`` (real recommender and echo subprocesses,
real load generator, 2 reload versions, 50 correctness users, a row of
sessions for unknown and for known users) and checks what must hold on any
machine: every call succeeds, every published version gets served, and
served top-k equals the exact brute force. The speed targets are
machine-dependent, so they are the benchmark's verdict, not this test's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
STAT_FIELDS = {"p50_ms", "p95_ms", "p99_ms", "calls_per_s", "calls", "errors", "server_cpu_us_per_call"}


def test_tiny_serve_benchmark_runs_clean(tmp_path):
    out = tmp_path / "serve.json"
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "serve.py"), "--tiny", "--out", str(out),
         "--work-dir", str(tmp_path / "work")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads(out.read_text())

    assert report["model"]["source"] == "synthetic"
    assert (report["model"]["num_users"], report["model"]["num_items"], report["model"]["dim"]) == (943, 1682, 64)

    assert [level["in_flight"] for level in report["levels"]] == [1, 8, 32, 64]
    for level in report["levels"]:
        for side in ("ours", "echo"):
            stats = level[side]
            assert STAT_FIELDS <= stats.keys()
            assert stats["errors"] == 0, (side, level["in_flight"], stats["error_details"])
            assert stats["calls"] > 0 and stats["calls_per_s"] > 0
            assert stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"]
        assert level["share_of_echo"] > 0

    sessions = report["sessions"]  # 10-movie sessions at 1 in flight, answered by the version's query encoder
    assert (sessions["in_flight"], sessions["recent_movies"]) == (1, 10) and "skipped" not in sessions
    assert [row["who"] for row in sessions["rows"]] == ["unknown_user", "known_user"]
    for row in sessions["rows"]:
        assert STAT_FIELDS <= row.keys()
        assert row["errors"] == 0, row["error_details"]
        assert row["calls"] > 0 and row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]

    reload = report["reload"]
    assert reload["versions_published"] == 2
    assert reload["versions_served"] == 2
    assert reload["errors"] == 0, reload["error_details"]
    assert [v["version"] for v in reload["per_version"]] == [2, 3]
    assert all(v["publish_to_served_s"] is not None and v["publish_to_served_s"] >= 0 for v in reload["per_version"])
    for window in ("steady", "during_reloads"):
        assert STAT_FIELDS - {"server_cpu_us_per_call"} <= reload[window].keys()
    assert reload["rss"]["steady_peak_mb"] > 0 and reload["rss"]["reload_peak_mb"] > 0

    correctness = report["correctness"]
    assert correctness["users"] == 50
    assert correctness["version"] == 3  # checked against the newest version, the one being served
    assert correctness["errors"] == 0
    assert correctness["mismatches"] == 0, correctness["examples"]

    names = {t["name"] for t in report["targets"]}
    assert {"1 in flight: p50", "1 in flight: p99", "32 in flight: throughput share of echo",
            "reloads: failed calls", "reloads: p99 during / steady", "reloads: publish-to-served median",
            "reloads: peak RSS / steady", "correctness: mismatches",
            "session of 10, unknown user, 1 in flight: p50", "session of 10, known user, 1 in flight: p50"} <= names
    assert isinstance(report["passed"], bool)
    # The verdicts are printed for a human, one line per target.
    assert completed.stdout.count("PASS  ") + completed.stdout.count("FAIL  ") == len(report["targets"])
