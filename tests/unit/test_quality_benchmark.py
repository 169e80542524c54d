"""The quality benchmark runs end to end on a tiny budget, so it cannot rot."""

from __future__ import annotations

import json

import numpy as np

from benchmarks import quality
from trainer_service.data import load_movielens_100k
from trainer_service.evaluation import evaluate_scores, popularity_vectors
from trainer_service.ratings import time_ordered_history
from trainer_service.splits import make_split
from trainer_service.training import train_model

# One kind per way of answering a session: pooled item vectors (two_tower),
# the 0/1 history row (ease) and two recency-weighted history parts
# (sequential); two_tower is also the refit target's kind. Every kind in
# all three sections would take about 90 s.
TEST_KINDS = ("two_tower", "ease", "sequential")
METRICS = ("recall_at_10", "ndcg_at_10", "recall_at_50")


def _check_metrics(metrics: dict, expected: dict | None = None) -> None:
    """``expected``: the same metrics measured here again, for the rows that are deterministic (the JSON
    must hold exactly those numbers); every row must at least be a consistent ranking measurement."""
    if expected is not None:
        assert {name: metrics[name] for name in (*METRICS, "users_evaluated")} == \
            {name: expected[name] for name in (*METRICS, "users_evaluated")}
    assert metrics["users_evaluated"] == quality.TINY_USERS
    assert 0.0 < metrics["recall_at_10"] <= metrics["recall_at_50"] <= 1.0, metrics  # 50 finds what 10 finds
    assert 0.0 < metrics["ndcg_at_10"] <= 1.0, metrics


def _check_summary(row: dict, served: str | None = None) -> None:
    """One seed: each summary is that run's number, with no spread (``served``: a temporal row's column)."""
    run = row["runs"][0][served or "metrics"]
    summary = row["summary"][served] if served else row["summary"]
    for name in METRICS:
        assert summary[name] == {"mean": run[name], "std": 0.0}, (row["kind"], name)


def test_tiny_benchmark_writes_tables_targets_and_json(movielens_dir, tmp_path, capsys):
    out = tmp_path / "quality.json"
    argv = ["--tiny", "--movielens-dir", str(movielens_dir), "--out", str(out), "--kinds", ",".join(TEST_KINDS)]
    assert quality.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["tiny"] is True and result["seeds"] == [0] and result["sections"] == list(quality.SECTIONS)

    # The deterministic rows, measured again here: popularity and the closed-form ease on the ua split.
    data = load_movielens_100k(str(movielens_dir))[0]
    split = quality.subset_users(make_split(data, "ua", 0, seed=0), quality.TINY_USERS)
    train_csr, test_csr = split.train_csr(), split.test_csr()
    ease = train_model("ease", split, quality.hyperparameters("ease", True), seed=0)
    again = {"popularity": evaluate_scores(*popularity_vectors(train_csr, split.data.n_items), train_csr, test_csr),
             "ease": evaluate_scores(ease.user_vectors, ease.item_vectors, train_csr, test_csr)}

    ua = result["ua"]
    assert "ua.base -> ua.test" in ua["split"]
    assert [row["kind"] for row in ua["rows"]] == ["popularity", *TEST_KINDS]
    for row in ua["rows"]:
        _check_metrics(row["runs"][0]["metrics"], again.get(row["kind"]))
        _check_summary(row)
    ua_recall = {row["kind"]: row["summary"]["recall_at_10"]["mean"] for row in ua["rows"]}
    assert ua_recall["ease"] > ua_recall["popularity"]  # closed form, so meaningful even on the tiny budget

    temporal = result["temporal"]
    assert "last 10 per user by timestamp" in temporal["split"]
    assert [row["kind"] for row in temporal["rows"]] == [quality.REFERENCE, "popularity", *TEST_KINDS]
    reference = temporal["rows"][0]
    assert reference["runs"][0]["l2_lambda"] in quality.EASE_LAMBDAS
    assert reference["ratio_to_reference"]["refit"] == 1.0
    outer = quality.outer_split(data, tiny=True)
    inner = quality.job_split(outer)
    chosen = quality.ease_reference(outer, 0)
    assert chosen.l2_lambda == reference["runs"][0]["l2_lambda"]
    pop_inner = popularity_vectors(inner.train_csr(), outer.data.n_items)
    pop_outer = popularity_vectors(outer.train_csr(), outer.data.n_items)
    again_temporal = {
        quality.REFERENCE: dict.fromkeys(("no_refit", "refit"), evaluate_scores(
            chosen.history, chosen.item_vectors, outer.train_csr(), outer.test_csr())),
        "popularity": {"no_refit": evaluate_scores(*pop_inner, outer.train_csr(), outer.test_csr()),
                       "refit": evaluate_scores(*pop_outer, outer.train_csr(), outer.test_csr())},
    }
    reference_means = {served: reference["summary"][served]["recall_at_10"]["mean"] for served in ("no_refit", "refit")}
    for row in temporal["rows"]:
        for served in ("no_refit", "refit"):
            _check_metrics(row["runs"][0][served], again_temporal.get(row["kind"], {}).get(served))
            _check_summary(row, served)
            assert row["ratio_to_reference"][served] == \
                row["summary"][served]["recall_at_10"]["mean"] / reference_means[served], (row["kind"], served)
    sequential = next(row for row in temporal["rows"] if row["kind"] == "sequential")
    assert "newest 5 per user" in sequential["runs"][0]["settings_chosen_on"]  # chosen by time, inside the job
    assert set(sequential["runs"][0]["settings"]) == {
        "l2_lambda", "dlae_dropout", "decay", "floor", "transition_decay", "transition_weight", "visitor"}
    reference_recall = reference["summary"]["refit"]["recall_at_10"]["mean"]
    assert reference_recall > temporal["rows"][1]["summary"]["refit"]["recall_at_10"]["mean"]

    sessions = result["sessions"]
    assert [row["kind"] for row in sessions["rows"]] == [quality.REFERENCE, "popularity", *TEST_KINDS]
    popularity_sessions = quality.popularity_session_metrics(outer, quality.last_sessions(outer))
    for row in sessions["rows"]:
        metrics = row["runs"][0]["metrics"]
        assert metrics["users_evaluated"] == popularity_sessions["users_evaluated"] > 0  # same users for every row
        if row["kind"] == "popularity":
            assert {n: metrics[n] for n in METRICS} == {n: popularity_sessions[n] for n in METRICS}
        assert 0.0 < metrics["recall_at_10"] <= metrics["recall_at_50"] <= 1.0, metrics
        _check_summary(row)
    ease_session = next(row for row in sessions["rows"] if row["kind"] == "ease")
    # The ease kind with lambda 300 asked with the same 10 movies is the reference when it chose 300 too.
    if reference["runs"][0]["l2_lambda"] == 300.0:
        assert ease_session["summary"]["recall_at_10"] == sessions["rows"][0]["summary"]["recall_at_10"]

    targets = {t["target"].split(":")[0]: t for t in result["targets"]}
    assert len(targets) == 3
    for target in targets.values():
        assert target["ratio"] == target["recall_at_10"] / target["baseline_recall_at_10"], target
        assert target["passed"] is (target["ratio"] >= target["threshold"]), target

    table = capsys.readouterr().out
    for heading in ("ua:", "temporal:", "sessions:"):
        assert heading in table
    for kind in TEST_KINDS:
        assert kind in table
    assert table.count("target:") == 3 and ("PASS" in table or "FAIL" in table)
    assert "Recall@10" in table and str(out) in table


def test_one_section_can_run_alone(movielens_dir, tmp_path, capsys):
    """Sessions alone still train the job's models (the refit needs them) but report only sessions."""
    out = tmp_path / "quality.json"
    argv = ["--tiny", "--movielens-dir", str(movielens_dir), "--out", str(out), "--kinds", "ease",
            "--sections", "sessions"]
    assert quality.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["sections"] == ["sessions"] and "ua" not in result and "temporal" not in result
    assert [t["target"] for t in result["targets"]] == [
        f"best session kind ≥ {quality.TARGET_RATIO}× EASE queried with the same {quality.SESSION_LENGTH} movies"]
    assert "temporal:" not in capsys.readouterr().out


def test_the_job_split_and_the_sessions_come_from_the_outer_train_by_time(movielens_dir):
    outer = quality.outer_split(load_movielens_100k(str(movielens_dir))[0], tiny=True)
    inner = quality.job_split(outer)
    data = outer.data
    assert inner.data is data
    np.testing.assert_array_equal(np.sort(np.concatenate([inner.train, inner.test])), outer.train)
    key = data.timestamps.astype(np.float64) + np.arange(len(data)) / (len(data) + 1.0)
    session_indptr, session_items = quality.last_sessions(outer)
    indptr, items, _ = time_ordered_history(data, outer.train)
    for user in range(quality.TINY_USERS):
        held_out = inner.test[data.users[inner.test] == user]
        kept = inner.train[data.users[inner.train] == user]
        assert held_out.size == min(quality.HOLDOUT_SIZE, kept.size + held_out.size - 1)
        assert key[held_out].min() > key[kept].max()  # the job holds out each user's newest ratings
        session = session_items[session_indptr[user]:session_indptr[user + 1]]
        np.testing.assert_array_equal(session, items[indptr[user]:indptr[user + 1]][-quality.SESSION_LENGTH:])
