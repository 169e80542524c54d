"""Real Train calls on MovieLens 25M-format files and on a named release: they
train and publish, and a malformed row fails the job with its file and line."""

from __future__ import annotations

import json
import shutil

import pytest

from clients import InvalidArgument, TrainerClient
from tests.datagen import write_movielens_dat_zip
from tests.servers import start_trainer
from trainer_service import synth

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("formats")
    data_root = base / "data"
    synth.generate(data_root / "synthetic", users=300, movies=200, ratings=8000, seed=5)
    bad = data_root / "bad"
    bad.mkdir()
    shutil.copy(data_root / "synthetic" / "movies.csv", bad / "movies.csv")
    lines = (data_root / "synthetic" / "ratings.csv").read_text().splitlines()
    lines[4] = "3,17,4.0"  # line 5: the timestamp is missing
    (bad / "ratings.csv").write_text("\n".join(lines) + "\n")
    ml_1m = write_movielens_dat_zip(base / "ml-1m.zip", users=200, movies=150, ratings=5000, seed=6)
    model_root = base / "models"
    trainer = start_trainer(model_root, base, "--data-root", str(data_root), "--movielens-dir", str(ml_1m))
    with TrainerClient(trainer.address, timeout=30) as tc:
        yield tc, model_root
    trainer.terminate()


def _metadata(model_root, version: int) -> dict:
    return json.loads((model_root / str(version) / "metadata.json").read_text())


def test_trains_on_generated_ratings_csv_and_movies_csv(stack):
    tc, model_root = stack
    job = tc.wait_for_job(tc.train("ease", ratings_path="synthetic/ratings.csv", items_path="synthetic/movies.csv",
                                   holdout="last_n_per_user", holdout_size=1).id, timeout=300)
    assert job.state == "SUCCEEDED", job.error
    assert job.published and job.model_version
    assert job.metrics["recall_at_10"] > job.baseline_metrics["recall_at_10"]  # the taste structure was learnt
    dataset = _metadata(model_root, job.model_version)["dataset"]
    assert "ML-20M/25M format" in dataset["source"]
    assert (dataset["num_users"], dataset["num_items"], dataset["num_ratings"]) == (300, 200, 8000)


def test_a_malformed_csv_row_fails_the_job_naming_file_and_line(stack):
    tc, _ = stack
    job = tc.wait_for_job(tc.train("ease", ratings_path="bad/ratings.csv", items_path="bad/movies.csv").id, timeout=60)
    assert job.state == "FAILED" and "bad/ratings.csv:5" in job.error and "expected 4" in job.error, job.error


def test_a_named_release_trains_from_the_local_grouplens_copy(stack):
    tc, model_root = stack
    job = tc.wait_for_job(tc.train("ease", dataset="movielens/1m-ratings", holdout_size=2).id, timeout=300)
    assert job.state == "SUCCEEDED", job.error
    source = _metadata(model_root, job.model_version)["dataset"]["source"]
    assert source.startswith("MovieLens 1M (") and source.endswith("ml-1m.zip)")


def test_an_unknown_dataset_name_is_invalid_argument_listing_the_known_ones(stack):
    tc, _ = stack
    with pytest.raises(InvalidArgument) as caught:
        tc.train("ease", dataset="movielens/7m-ratings")
    assert "movielens/7m-ratings" in caught.value.details
    assert "movielens/1m-ratings" in caught.value.details and "movielens/25m-ratings" in caught.value.details
    with pytest.raises(InvalidArgument, match="not both"):
        tc.train("ease", dataset="movielens/1m-ratings", ratings_path="synthetic/ratings.csv",
                 items_path="synthetic/movies.csv")


def test_the_command_line_sends_the_dataset_name(stack, capsys):
    from clients import cli

    tc, _ = stack
    code = cli.main(["--trainer", tc.target, "train", "--model", "ease", "--dataset", "movielens/7m-ratings"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and "unknown dataset name 'movielens/7m-ratings'" in err
    code = cli.main(["--trainer", tc.target, "--json", "train", "--model", "ease", "--dataset", "movielens/1m-ratings",
                     "--holdout-size", "2", "--watch"])
    assert code == cli.EXIT_OK, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["state"] == "SUCCEEDED"


def test_closed_form_kinds_are_refused_when_the_catalogue_is_too_large(stack):
    """A named release's size is known: refused at Train time. Files are the job's to read: it counts the
    movies before it parses a single rating, and fails."""
    tc, model_root = stack
    jobs_before = len(tc.list_jobs())
    with pytest.raises(InvalidArgument) as caught:
        tc.train("dlae", dataset="movielens/25m-ratings")
    assert "62,423" in caught.value.details
    assert "Kinds that fit this catalogue: two_tower, two_tower_dropout, bpr" in caught.value.details
    assert len(tc.list_jobs()) == jobs_before  # nothing was queued

    target = model_root.parent / "data" / "wide"
    synth.generate(target, users=40, movies=25_000, ratings=400, seed=7)
    (target / "ratings.csv").write_text("not a ratings file\n")  # parsed first, this would fail otherwise
    job = tc.wait_for_job(tc.train("ease", ratings_path="wide/ratings.csv", items_path="wide/movies.csv").id,
                          timeout=60)
    assert job.state == "FAILED", job.state
    assert "at most 20,000 movies; this dataset has 25,000" in job.error and "two_tower" in job.error, job.error
