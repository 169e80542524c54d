"""The filter benchmark runs end to end on a tiny budget, so it cannot rot (speed is not judged: CI shares its
cores; correctness is: every answer it checked must pass its filter and hold exactly min(k, eligible) movies)."""

from __future__ import annotations

import json

import pytest

from benchmarks import filters

pytestmark = pytest.mark.slow

SYNTHETIC_CLASSES = ("none", "genre", "two_genres", "only_ids", "exclude_ids", "years")
MOVIELENS_CLASSES = ("none", "genre", "years", "exclude_ids")


def test_tiny_filters_benchmark_measures_every_class_checks_every_answer_and_hides_across_replicas(
        movielens_dir, tmp_path, capsys):
    out = tmp_path / "filters.json"
    assert filters.main(["--tiny", "--movielens-dir", str(movielens_dir), "--out", str(out)]) == 0
    report = json.loads(out.read_text())

    synthetic = report["synthetic"]
    assert synthetic["model"]["num_items"] == 20_000 and synthetic["index"]["kind"]  # served through faiss
    rows = synthetic["rows"]
    assert [row["kind"] for row in rows] == list(SYNTHETIC_CLASSES)
    for row in rows:
        assert row["calls"] > 0 and row["answers_checked"] >= row["calls"], row["class"]
        assert 0 < row["p50_ms"] <= row["p99_ms"], row["class"]
        assert row["recall_users"] > 0 and 0.0 <= row["recall_at_10"] <= 1.0, row["class"]
        assert row["problems"] == dict.fromkeys(filters.PROBLEMS, 0), (row["class"], row["examples"])
        assert 0.0 < row["passing_share"] <= 1.0
        assert row["echo"]["calls"] > 0 and row["echo"]["p50_ms"] > 0  # the same requests, nothing behind them
    assert rows[0]["passing_share"] == 1.0 and rows[2]["passing_share"] < rows[1]["passing_share"]

    movielens = report["movielens"]
    assert report["movielens_job"]["version"] >= 1
    assert [row["kind"] for row in movielens["rows"]] == list(MOVIELENS_CLASSES)
    for row in movielens["rows"]:
        assert row["calls"] == movielens["users"] * movielens["rounds"] and row["p50_ms"] > 0, row["class"]
        assert row["problems"] == dict.fromkeys(filters.PROBLEMS, 0), (row["class"], row["examples"])
        assert row["p50_minus_unfiltered_ms"] is not None

    hidden = report["hidden"]
    assert hidden["replicas"] == 3 and hidden["hidden_movies"] > 0
    assert hidden["convergence_s"] is not None and hidden["convergence_s"] > 0
    assert all(r["converged_s"] is not None for r in hidden["per_replica"])
    assert hidden["load"]["calls"] > 0 and hidden["load"]["answers_holding_hidden"] == 0
    assert hidden["load"]["problems"] == dict.fromkeys(filters.PROBLEMS, 0), hidden["load"]["examples"]

    names = {t["name"] for t in report["targets"]}
    assert sum(name.startswith("recall@10") for name in names) == len(SYNTHETIC_CLASSES)
    assert any("MovieLens 100K p50" in name for name in names)
    assert any("HideMovies" in name for name in names)
    printed = capsys.readouterr().out
    assert "| filter class |" in printed and "HideMovies returned" in printed
