"""The long-tail benchmark runs end to end on a tiny budget, so it cannot rot (quality is not judged here,
only that each figure is measured the way its docstring says)."""

from __future__ import annotations

import json

import numpy as np

from benchmarks import long_tail
from tests.unit.test_popularity_prior import assert_walked_up_to_the_peak
from trainer_service import popularity_prior


def test_tiny_long_tail_benchmark_measures_model_baselines_and_diagnostics(tmp_path, capsys):
    out = tmp_path / "long_tail.json"
    assert long_tail.main(["--tiny", "--out", str(out), "--variant", "before:sampled_temperature=0"]) == 0
    report = json.loads(out.read_text())
    users = long_tail.SHAPES["tiny"]["users"]
    oracle, popular = report["cluster_oracle"], report["global_popularity"]
    assert oracle["users_evaluated"] == popular["users_evaluated"] == users
    # The shape works as intended: the user's own clusters' hits are a far better answer than the global hits.
    assert oracle["hit_at_10"] > 3 * popular["hit_at_10"]
    # The job's neighbourhood baseline finds the users' own tastes too (it knows no clusters).
    neighbourhood = report["neighbourhood_popularity"]
    assert 0 < neighbourhood["users_evaluated"] <= users
    assert neighbourhood["hit_at_10"] > 2 * popular["hit_at_10"]
    (variant,) = report["variants"]
    assert variant["name"] == "before" and variant["softmax"] == "sampled" and variant["epochs_run"] == 1
    assert variant["hyperparameters"]["sampled_temperature"] == 0 and variant["users_evaluated"] == users
    assert 0 < variant["distinct_in_top10s"] <= 10 * long_tail.DIAGNOSTIC_USERS
    assert 0 <= variant["share_of_picks_from_less_rated_half"] <= 1
    assert variant["norm_top1pct_median"] > 0 and variant["norm_median"] > 0
    # The popularity prior was chosen on validation among its choices, and each choice's figure is reported.
    assert variant["popularity_prior"] in popularity_prior.GAMMA_CHOICES
    assert_walked_up_to_the_peak(variant["popularity_prior"], variant["popularity_prior_validation"])
    assert [t["name"].split(" ", 1)[1] for t in report["targets"]] == [
        "hit@10 / cluster oracle", "hit@10 / global popularity"]
    table = capsys.readouterr().out
    assert "cluster_oracle" in table and str(out) in table
    if variant["popularity_prior"] == 0:
        assert variant["hit_at_10_without_prior"] == variant["hit_at_10"]
    else:
        assert ", prior off" in table


def test_cluster_oracle_recommends_the_most_rated_unseen_movies_of_the_users_clusters():
    data = long_tail.clustered_data(long_tail.SHAPES["tiny"], seed=3)
    indptr, seen = data.split.train_csr()
    counts = np.bincount(seen, minlength=data.split.data.n_items)
    user = 0
    mine = np.flatnonzero(np.isin(data.movie_cluster, data.user_clusters[user]))
    unseen = np.setdiff1d(mine, seen[indptr[user]:indptr[user + 1]])
    best = unseen[np.argsort(-counts[unseen], kind="stable")[:10]]
    scores = data.oracle_scores(np.array([user]), counts.astype(np.float32))[0]
    scores[seen[indptr[user]:indptr[user + 1]]] = -np.inf
    top = np.argsort(-scores, kind="stable")[:10]
    assert sorted(counts[top].tolist()) == sorted(counts[best].tolist())
    assert np.isin(top, mine).all()
