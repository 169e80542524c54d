"""The replay benchmark (issue 19's "freshness pays") runs end to end through a real trainer and real
recommenders on a tiny slice, so it cannot rot. Its ratios are not judged on so little data; its shape and
its bookkeeping are: the three settings, every interaction acknowledged, a retrained version served, and
every sampled answer given by the version its setting expects."""

from __future__ import annotations

import json

import pytest

from benchmarks import replay

pytestmark = pytest.mark.slow


def test_tiny_replay_runs_three_settings_through_the_services(movielens_dir, tmp_path, capsys):
    out = tmp_path / "replay.json"
    assert replay.main(["--tiny", "--movielens-dir", str(movielens_dir), "--out", str(out),
                        "--work-dir", str(tmp_path / "work")]) == 0
    report = json.loads(out.read_text())

    data = report["data"]
    assert data["replayed"] == 400 and data["samples"] == 200 and data["base"] > 1000
    [kind] = report["kinds"]
    assert kind["kind"] == "ease" and kind["base"]["version"] >= 1
    base = kind["base"]["version"]
    settings = kind["settings"]
    assert list(settings) == ["frozen", "fresh", "retrain"]

    for name, result in settings.items():
        assert result["samples"] == data["samples"] > 0, name
        assert 0 <= result["hits"] <= result["samples"], name
        assert result["hit_at_10"] == pytest.approx(result["hits"] / result["samples"]), name
        # Every sampled Recommend was answered by the version the setting expects: the base version
        # (frozen, fresh), or in the retrain setting the last retrained version the replay waited for.
        assert result["answers_by_unexpected_version"] == 0, (name, result["unexpected_examples"])
        assert sum(result["versions"].values()) == result["samples"], name

    frozen, fresh, retrain = settings["frozen"], settings["fresh"], settings["retrain"]
    assert frozen["interactions_sent"] == 0 and frozen["record_calls"] == 0
    assert frozen["versions"] == {str(base): frozen["samples"]}
    assert frozen["recommender"]["events"] == "" and frozen["recommender"]["fresh_interactions"] == 0

    for result in (fresh, retrain):  # every interaction of the replayed half acknowledged, in one store each
        assert result["interactions_sent"] == data["replayed"]
        assert result["acknowledged"] == result["stored"] == data["replayed"]
        assert result["store_watermark"] == data["replayed"]
    assert fresh["versions"] == {str(base): fresh["samples"]} and fresh["retrains"] == []
    assert fresh["recommender"]["fresh_interactions"] > 0  # the replica answered with fresh histories

    # The policy retrained every 150 interactions, and the replay waited for each version to be served.
    retrains = retrain["retrains"]
    assert len(retrains) == data["replayed"] // report["config"]["retrain_after"] == 2
    assert retrain["retrained_versions_served"] >= 1 and retrain["versions_served"] >= 2
    for record in retrains:
        assert record["trigger"] == "retrain_after_interactions" and record["published"], record
        assert record["job_watermark"] == record["store_watermark"], record  # the replay paused at that position
    assert int(max(retrain["versions"], key=int)) == retrains[-1]["version"] > base

    # The paired comparisons agree with the totals: what one setting alone hit, less what the other alone hit.
    for setting, before in (("fresh", "frozen"), ("retrain", "fresh")):
        paired = settings[setting][f"paired_with_{before}"]
        assert paired["hits_only_here"] - paired[f"hits_only_{before}"] == \
            settings[setting]["hits"] - settings[before]["hits"], (setting, paired)

    names = [t["name"] for t in report["targets"]]
    assert names == ["ease: fresh / frozen hit@10", "ease: fresh + retrain / fresh hit@10"]
    printed = capsys.readouterr().out
    assert "| setting | samples | hits | hit@10 |" in printed and "fresh + retrain" in printed
