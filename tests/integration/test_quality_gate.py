"""The quality gate: a model below the floor, or worse than the version
callers get on the same data, ends SUCCEEDED but unpublished, with the reason.

"The version callers get" is the pinned one, else the ones live recommenders
serve, else the newest (pipeline.regression); the test sets each up so that
comparing with the newest instead would decide the other way.
"""

from __future__ import annotations

import re

import pytest

from clients import TrainerClient
from movierec_common.model_root import write_pin, write_serving_marker
from tests.datagen import write_grouplens_files
from tests.servers import start_trainer

DATA = dict(ratings_path="ratings.data", items_path="items.item", holdout_size=2, refit=False)
# A learning rate this small leaves the seeded initial weights almost as they
# were: a worse model than GOOD, and the same one every time it is trained.
BAD = dict(epochs=1, hyperparameters={"learning_rate": 1e-6}, **DATA)
GOOD = dict(epochs=5, **DATA)
# The trainer's --min-recall is 0.99; these jobs ask for a floor every model here passes.
NO_REGRESSION = dict(require_no_regression=True, min_validation_recall_at_10=0.001)


def _versions(model_root):
    return sorted(int(p.name) for p in model_root.iterdir() if p.name.isdigit()) if model_root.exists() else []


@pytest.fixture()
def gated_trainer(tmp_path):
    data_root = write_grouplens_files(tmp_path / "data", users=120, items=60, per_user=15)
    trainer = start_trainer(tmp_path / "models", tmp_path, "--data-root", str(data_root), "--min-recall", "0.99")
    yield trainer, tmp_path / "models"
    trainer.terminate()


def _recall(job) -> float:
    return job.metrics["validation_recall_at_10"]


def test_floor_and_regression_gates(gated_trainer):
    trainer, model_root = gated_trainer
    root = str(model_root)
    with TrainerClient(trainer.address, timeout=30) as tc:
        def run(kind="two_tower", **request):
            return tc.wait_for_job(tc.train(kind, **request).id, timeout=300)

        refused = run("ease", **DATA)
        assert refused.state == "SUCCEEDED" and not refused.published and refused.model_version is None
        assert "below the floor 0.9900" in refused.not_published_reason
        assert _versions(model_root) == []

        bad = run(**BAD, quality_gate_disabled=True)
        assert bad.model_version == 1
        # Nothing pinned or served: the newest (version 1) is the one to beat.
        good = run(**GOOD, **NO_REGRESSION)
        assert good.published and good.model_version == 2, good.not_published_reason
        assert _recall(good) > _recall(bad)

        worse = run(**BAD, **NO_REGRESSION)
        assert worse.state == "SUCCEEDED" and not worse.published
        assert "below version 2's" in worse.not_published_reason
        assert "(the newest published version)" in worse.not_published_reason
        assert _versions(model_root) == [1, 2]

        # Pinned to version 1 (as PinVersion does): the same bad model again equals
        # what callers get, so it is published, where the newest (2) would refuse it.
        write_pin(root, 1)
        same = run(**BAD, **NO_REGRESSION)
        assert same.published and same.model_version == 3, same.not_published_reason
        assert _recall(same) == _recall(bad) < _recall(good)  # equal, so equal is not a regression
        assert same.loss_history == pytest.approx(bad.loss_history, rel=1e-5)  # the same training, too

        # Unpinned, and a live recommender serves version 2 (its watcher's serving
        # marker): the newest (3) equals the candidate, but what is served is better.
        write_pin(root, None)
        write_serving_marker(root, "replica-a", 2)
        behind_served = run(**BAD, **NO_REGRESSION)
        assert not behind_served.published and _recall(behind_served) == _recall(same)
        assert "below version 2's" in behind_served.not_published_reason
        assert "(served by a live recommender)" in behind_served.not_published_reason
        assert _versions(model_root) == [1, 2, 3]

        # Beating neighbourhood popularity on the validation split the model was chosen on: the
        # near-initial model does not; EASE (item-item regression, a stronger use of the same
        # co-occurrences) does, and is published.
        below = run(**BAD, require_beating_baseline=True, min_validation_recall_at_10=0.001)
        assert below.state == "SUCCEEDED" and not below.published
        found = re.search(r"below neighbourhood popularity's (\d\.\d{4}) on the same validation split",
                          below.not_published_reason)
        assert found, below.not_published_reason
        assert _recall(below) < float(found.group(1))
        above = run("ease", require_beating_baseline=True, min_validation_recall_at_10=0.001, **DATA)
        assert above.published and above.model_version == 4, above.not_published_reason
        assert _recall(above) >= float(found.group(1))  # the same validation split (same seed and size)
