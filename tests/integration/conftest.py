"""A trainer and a recommender sharing one model root, with one small model
published, for tests that need live servers but not a MovieLens-sized run."""

from __future__ import annotations

import pytest

from clients import RecommenderClient, TrainerClient
from tests.datagen import write_grouplens_files
from tests.servers import start_recommender, start_trainer


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("stack")
    data_root = write_grouplens_files(base / "data")
    model_root = base / "models"
    trainer = start_trainer(model_root, base, "--data-root", str(data_root))
    recommender = None
    try:
        recommender = start_recommender(model_root, base)
        with TrainerClient(trainer.address, timeout=30) as tc:
            job = tc.wait_for_job(tc.train("two_tower", epochs=2, ratings_path="ratings.data",
                                           items_path="items.item", holdout_size=2).id, timeout=300)
        assert job.state == "SUCCEEDED", job.error
        with RecommenderClient(recommender.address, timeout=10) as rc:
            rc.wait_until_serving(timeout=60)
        yield {"trainer": trainer, "recommender": recommender, "model_root": model_root, "data_root": data_root,
               "first_job": job, "base": base}
    finally:  # also when the set-up fails: no server outlives the module
        trainer.terminate()
        if recommender is not None:
            recommender.terminate()
