"""The answer-cache memory benchmark runs end to end on a tiny budget, so it cannot rot (memory is not judged)."""

from __future__ import annotations

import json

import pytest

from benchmarks import answer_cache

pytestmark = pytest.mark.slow


def test_tiny_answer_cache_benchmark_measures_both_key_ranges(tmp_path, capsys):
    out = tmp_path / "answer_cache.json"
    assert answer_cache.main(["--tiny", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["answer_cache_mb"] == 64.0
    assert list(report["rows"]) == list(answer_cache.KEY_RANGES)
    for row in report["rows"].values():
        assert row["calls"] == answer_cache.TINY_CALLS
        assert row["before_mb"] > 0 and row["after_mb"] > 0 and row["seconds"] > 0
    assert "growth MB" in capsys.readouterr().out
