"""The quality benchmark runs end to end on a tiny budget, so it cannot rot."""

from __future__ import annotations

import json

from benchmarks import quality
from trainer_service.hyperparams import MODEL_KINDS


def test_tiny_benchmark_writes_table_and_json(movielens_dir, tmp_path, capsys):
    out = tmp_path / "quality.json"
    assert quality.main(["--tiny", "--movielens-dir", str(movielens_dir), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    kinds = [row["kind"] for row in result["rows"]]
    assert kinds == ["popularity", *MODEL_KINDS]
    assert result["tiny"] is True and result["seeds"] == [0]
    assert "ua.base -> ua.test" in result["split"]
    for row in result["rows"]:
        for name in ("recall_at_10", "ndcg_at_10", "recall_at_50"):
            assert 0.0 <= row["summary"][name]["mean"] <= 1.0
        assert row["runs"][0]["metrics"]["users_evaluated"] == quality.TINY_USERS
    popularity = result["rows"][0]["summary"]["recall_at_10"]["mean"]
    ease = next(r for r in result["rows"] if r["kind"] == "ease")["summary"]["recall_at_10"]["mean"]
    assert ease > popularity  # closed form, so meaningful even on the tiny budget
    table = capsys.readouterr().out
    for kind in kinds:
        assert kind in table
    assert "Recall@10" in table and str(out) in table
