"""The quality gate: a model below the floor, or worse than the published one
on the same data, ends SUCCEEDED but unpublished, with the reason."""

from __future__ import annotations

import pytest

from clients import TrainerClient
from tests.datagen import write_grouplens_files
from tests.servers import start_trainer

DATA = dict(ratings_path="ratings.data", items_path="items.item", holdout_size=2)


def _versions(model_root):
    return sorted(int(p.name) for p in model_root.iterdir() if p.name.isdigit()) if model_root.exists() else []


@pytest.fixture()
def gated_trainer(tmp_path):
    data_root = write_grouplens_files(tmp_path / "data", users=120, items=60, per_user=15)
    trainer = start_trainer(tmp_path / "models", tmp_path, "--data-root", str(data_root), "--min-recall", "0.99")
    yield trainer, tmp_path / "models"
    trainer.terminate()


def test_floor_and_regression_gates(gated_trainer):
    trainer, model_root = gated_trainer
    with TrainerClient(trainer.address, timeout=30) as tc:
        refused = tc.wait_for_job(tc.train("two_tower", epochs=3, **DATA).id, timeout=300)
        assert refused.state == "SUCCEEDED" and not refused.published and refused.model_version is None
        assert "below the floor 0.9900" in refused.not_published_reason
        assert _versions(model_root) == []

        good = tc.wait_for_job(tc.train("two_tower", epochs=5, quality_gate_disabled=True, **DATA).id, timeout=300)
        assert good.published and good.model_version == 1

        worse = tc.wait_for_job(tc.train(
            "two_tower", epochs=1, hyperparameters={"learning_rate": 1e-6}, require_no_regression=True,
            min_validation_recall_at_10=0.001, **DATA).id, timeout=300)
        assert worse.state == "SUCCEEDED" and not worse.published
        assert "below the published version 1's" in worse.not_published_reason
        assert worse.metrics["validation_recall_at_10"] < good.metrics["validation_recall_at_10"]
        assert _versions(model_root) == [1]

        same = tc.wait_for_job(tc.train("two_tower", epochs=5, require_no_regression=True,
                                        min_validation_recall_at_10=0.001, **DATA).id, timeout=300)
        assert same.published and same.model_version == 2  # equal is not a regression
