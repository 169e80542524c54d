"""The history-aware kind through the real trainer and recommender: a refit is
published and recorded, refit=False publishes the evaluated model, and a
visitor's session is answered by the served version's own query rule (checked
against ``tests.session_reference``, the documented rules written apart from
``QueryEncoder``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clients import RecommenderClient, TrainerClient
from movierec_common import artifact as artifact_format
from movierec_common.session_query import METADATA_KEY
from tests.datagen import write_grouplens_files
from tests.servers import start_recommender, start_trainer
from tests.session_reference import best, visitor_query
from tests.waiting import wait_for_version

pytestmark = pytest.mark.slow


def test_sequential_jobs_publish_a_refit_and_serve_sessions(tmp_path):
    data_root = write_grouplens_files(tmp_path / "data", users=80, items=50, per_user=15)
    model_root = tmp_path / "models"
    trainer = start_trainer(model_root, tmp_path, "--data-root", str(data_root))
    recommender = start_recommender(model_root, tmp_path)
    request = dict(ratings_path="ratings.data", items_path="items.item", holdout="last_n_per_user", holdout_size=3,
                   quality_gate_disabled=True)
    try:
        with TrainerClient(trainer.address, timeout=30) as tc:
            refit = tc.wait_for_job(tc.train("sequential", **request).id, timeout=300)
            plain = tc.wait_for_job(tc.train("sequential", refit=False, **request).id, timeout=300)
        assert refit.state == plain.state == "SUCCEEDED", (refit.error, plain.error)
        assert refit.metrics["refit"] == 1.0 and plain.metrics["refit"] == 0.0
        # Evaluation is the same run either way; only what is published differs.
        assert refit.metrics["recall_at_10"] == plain.metrics["recall_at_10"]

        first = json.loads((model_root / str(refit.model_version) / "metadata.json").read_text())
        second = json.loads((model_root / str(plain.model_version) / "metadata.json").read_text())
        assert first["refit"]["enabled"] and not second["refit"]["enabled"]
        assert first["refit"]["settings"] == first["settings"] == second["settings"]
        assert "newest 5 per user" in first["refit"]["settings_chosen_on"]
        assert first["refit"]["metrics_measured_on"] == "last 3 per user by timestamp"
        assert first["history_order"] == "time"

        refit_artifact, _ = artifact_format.load(str(model_root / str(refit.model_version)))
        plain_artifact, _ = artifact_format.load(str(model_root / str(plain.model_version)))
        assert refit_artifact.time_ordered
        # The refit's user vectors hold the held-out (newest) ratings; the evaluated model's do not.
        assert np.count_nonzero(refit_artifact.user_vectors) > np.count_nonzero(plain_artifact.user_vectors)

        with RecommenderClient(recommender.address, timeout=10) as rc:
            rc.wait_until_serving(timeout=60)
            wait_for_version(rc, plain.model_version)
            served = plain_artifact
            rule = second[METADATA_KEY]
            assert rule.get("visitor_parts"), "the sequential kind writes a visitor rule of its own"
            session = [int(m) for m in served.movie_ids[[3, 9, 4]]] + [999_999]
            answer = rc.recommend("someone-new", k=5, recent=session)
            assert not answer.cold_start and answer.unknown_movie_ids == [999_999]
            scores = served.item_vectors @ visitor_query(rule, [3, 9, 4], served.item_vectors)
            expected = best(scores, [3, 9, 4], 5)
            assert [item.movie_id for item in answer.items] == served.movie_ids[expected].tolist()
            np.testing.assert_allclose([item.score for item in answer.items], scores[expected], rtol=1e-4)
    finally:
        trainer.terminate()
        recommender.terminate()
